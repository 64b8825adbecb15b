"""What "the same message" means when test and training text are compared for copies, seen through Unicode.

A copy of a test message can be disguised without changing how it reads: full-width letters (``ＦＲＥＥ``),
invisible characters inside words (zero-width space, soft hyphen, zero-width joiner/non-joiner), a
decomposed (NFD) spelling of accented letters, or Cyrillic/Greek letters that look like Latin ones.
:func:`comparison_text` undoes each of these, in this order:

1. NFKC (compatibility normalisation): full-width and other compatibility forms become plain letters,
   decomposed accents are recomposed;
2. format characters (general category Cf: U+200B, U+00AD, U+200C/U+200D, U+2060, U+FEFF, ...) and the
   other invisible default-ignorables (variation selectors, the combining grapheme joiner, Hangul fillers)
   are removed;
3. case folding (``str.casefold``);
4. every character is replaced by its confusables *prototype* (the skeleton of Unicode TS #39,
   ``confusables.txt`` as shipped by the ``confusable-homoglyphs`` package; nothing is downloaded);
   Cyrillic and Greek capitals that look like a Latin capital (В Н К М Т, Η Κ Μ ...) map to that
   Latin letter, and so do their lower-case forms where those would not otherwise become a Latin letter
   (в→b), so a copy in capitals is still a copy;
5. NFC (so an accented letter stays one word character), then punctuation and repeated spaces are
   dropped as before (:func:`weakflow.tasks.core.text.normalise`).

The key is only ever compared, never shown: the skeleton of a text is not meant to be read. One function
for every place that compares test (or served) text with training text: the validation suite's test-copy
expectation, the governance stage's exact and near-copy checks and the pseudo-label check
(``data_checks/contamination.py``), and the monitoring flow's production contamination check. (The gold
folds' copy groups and the text demo's split keep :func:`weakflow.tasks.core.text.normalise`: on the shipped
SMS data both make the same groups, and its hashes fix the folds and split the recorded figures used.)
"""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import lru_cache

import pandas as pd

# invisible characters that are not category Cf but are Default_Ignorable_Code_Point in Unicode
_OTHER_IGNORABLE = [(0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180D), (0x180F, 0x180F),
                    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xE0100, 0xE01EF)]
_PUNCT = re.compile(r"[^\w\s]")


@lru_cache(maxsize=1)
def _ignorable() -> re.Pattern[str]:
    """A character class of every format (Cf) character this Python's Unicode database knows, plus the
    other invisible default-ignorables; built once per process (about 0.2 s)."""
    ranges: list[tuple[int, int]] = list(_OTHER_IGNORABLE)
    start = None
    for cp in range(sys.maxunicode + 1):
        cf = unicodedata.category(chr(cp)) == "Cf"
        if cf and start is None:
            start = cp
        elif not cf and start is not None:
            ranges.append((start, cp - 1))
            start = None
    body = "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in sorted(ranges))
    return re.compile(f"[{body}]+")


def _prototypes() -> dict[str, str]:
    """Each confusable character -> its prototype (the TS #39 mapping), from the library's data.

    ``confusable-homoglyphs`` stores ``confusables.txt`` as a symmetric table (each character lists the
    characters it is confusable with, both ways). Every connected group in it is a star around one
    prototype (checked when this module was written: 3,312 groups, none with two multi-character
    members): the prototype is the multi-character member if there is one (sources are always single
    code points), else the member linked to all others. In a group of two single characters either can
    serve for equality; the one NFKC keeps and that is a letter is taken, since text reaches the table after
    NFKC and punctuation is dropped after it."""
    from confusable_homoglyphs.confusables import confusables_data

    def clean(text: str) -> str:  # the table keeps the bidi marks that surround right-to-left text
        return text.replace("\u200e", "").replace("\u200f", "")

    links: dict[str, set[str]] = {}
    for key, entries in confusables_data.items():
        a = clean(key)
        for entry in entries:
            b = clean(entry["c"])
            if a and b and a != b:
                links.setdefault(a, set()).add(b)
                links.setdefault(b, set()).add(a)
    mapping: dict[str, str] = {}
    seen: set[str] = set()
    for node in sorted(links):
        if node in seen:
            continue
        group, stack = [], [node]
        seen.add(node)
        while stack:
            here = stack.pop()
            group.append(here)
            for other in links[here]:
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        multi = [g for g in group if len(g) > 1]
        if multi:
            prototype = min(multi)
        else:  # the star's centre; of two, one that NFKC keeps and that is a letter or digit (文, not ⽂)
            prototype = max(group, key=lambda g: (len(links[g]), unicodedata.normalize("NFKC", g) == g,
                                                   g.isalnum(), g.isascii(), -ord(g)))
        for member in group:
            if len(member) == 1 and member != prototype:
                mapping[member] = prototype
    return mapping


@lru_cache(maxsize=1)
def _table() -> dict[int, str]:
    """The per-character translation (applied after NFKC, removal of invisibles and case folding)."""
    proto = _prototypes()

    def skeleton(text: str) -> str:
        for _ in range(4):  # a prototype is its own prototype; a few rounds reach the fixed point
            mapped = unicodedata.normalize("NFD", "".join(proto.get(ch, ch) for ch in unicodedata.normalize("NFD", text)))
            if mapped == text:
                break
            text = mapped
        return unicodedata.normalize("NFC", text)

    # ASCII punctuation and symbols are what they look like, and are dropped from the key anyway (& is not
    # turned into the letter it resembles; | still reads as l)
    proto = {ch: p for ch, p in proto.items() if not ch.isascii() or ch.isalnum() or ch == "|"}
    table: dict[int, str] = {}
    for ch in proto:
        if ch.casefold() == ch:  # the text is folded first: only characters folding leaves alone occur
            key = skeleton(skeleton(ch).casefold())  # 0 -> O -> o: a prototype may be a capital
            if key != ch:
                table[ord(ch)] = key
    # lower-case forms of capitals that look like a Latin capital (Cyrillic в of В, т of Т): that Latin
    # letter where their own skeleton is not Latin (в looks like a small capital B), so a copy written in
    # capitals (ВОТ) and one in small letters (вот) key the same, and both as the Latin look-alike
    for ch in proto:
        latin, lower = proto[ch], ch.casefold()
        if (lower != ch and len(lower) == 1 and len(latin) == 1 and latin.isascii() and latin.isupper()
                and not ch.isascii() and not skeleton(lower).isascii()):
            table[ord(lower)] = skeleton(latin.casefold())
    for code, key in table.items():  # the key of a key is itself (𝜇 -> μ -> the key of μ)
        for _ in range(4):
            if key.translate(table) == key:
                break
            key = key.translate(table)
        table[code] = key
    return table


def comparison_key(text: str) -> str:
    """One text's comparison form (see the module docstring)."""
    if text.isascii():  # most text: NFKC, invisibles and folding reduce to lower case; bytes are fastest
        keyed = text.encode("ascii").translate(_ascii_table())
        for source, key in _ASCII_MULTI.items():
            keyed = keyed.replace(source, key)
        return b" ".join(keyed.split()).decode("ascii")
    folded = _ignorable().sub("", unicodedata.normalize("NFKC", text)).casefold()
    keyed = unicodedata.normalize("NFC", folded.translate(_table()))
    return " ".join(_PUNCT.sub(" ", keyed).split())


_ASCII_MULTI = {b"m": b"rn"}  # the one ASCII letter whose prototype is two letters


@lru_cache(maxsize=1)
def _ascii_table() -> bytes:
    """The whole mapping of ASCII text but ``m``, one byte to one byte (for ``bytes.translate``): lower
    case, punctuation and the separators ``str.split`` would see to a space, ``0``/``1``/``|`` to their
    prototypes."""
    table = bytearray(range(256))
    for code in range(128):
        ch = chr(code)
        if ch.isupper():
            table[code] = ord(ch.lower())
        elif (_PUNCT.match(ch) and ch != "|") or ch.isspace():
            table[code] = ord(" ")
    for code, key in _table().items():
        if code < 128 and bytes([code]) not in _ASCII_MULTI:
            table[code] = ord(key)
    if {bytes([c]): k.encode() for c, k in _table().items() if c < 128 and len(k) > 1} != _ASCII_MULTI:
        raise RuntimeError("the confusables data maps ASCII letters differently from the fast path's "
                           "_ASCII_MULTI: update it with the library")
    return bytes(table)


def comparison_text(texts: pd.Series) -> pd.Series:
    """:func:`comparison_key` of every text of a column (missing = empty), indexed like it. Repeated texts
    are keyed once."""
    values = texts.fillna("").astype(str)
    unique = pd.unique(values.to_numpy())
    if len(unique) < len(values):
        keys = dict(zip(unique, map(comparison_key, unique)))
        return values.map(keys)
    return pd.Series([comparison_key(v) for v in values.to_numpy()], index=texts.index, dtype=object)
