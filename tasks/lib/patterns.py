"""Regular expressions a user writes (``weak_labels.rules`` patterns, keyword lists), compiled for RE2.

Python's ``re`` backtracks: ``(a+)+$`` on forty a's and a b takes longer than the universe's age, inside C code
that holds the GIL, so no time limit or signal can stop it. RE2 (``google-re2``) matches in time linear in the
text for every pattern it accepts, and releases the GIL while it matches. The price is a few constructs only a
backtracking engine can run (look-arounds, backreferences, possessive quantifiers, atomic groups, conditionals):
:func:`compile_pattern` refuses them with one sentence saying which construct and why, so a config naming one
fails at load time instead of hanging a run. RE2 syntax: https://github.com/google/re2/wiki/Syntax
"""

from __future__ import annotations

import re
from typing import Any

WHY = "rules run on RE2, a linear-time engine, so that no pattern can hang a run"
SYNTAX = "https://github.com/google/re2/wiki/Syntax"
MAX_MEM = 64 << 20  # bytes RE2 may use per rule; its default 8 MiB refuses a list of 100,000 8-letter keywords
# What Python's Unicode-aware \w and \s match, spelt for RE2 (whose \w, \s are ASCII): a keyword must not touch
# a word character on either side, in any script. Equal to Python's sets on every character Python's Unicode
# tables know (tests/code/test_rules.py checks all code points).
WORD_CHARS = r"\p{L}\p{N}_"
SPACE_CHARS = r"\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"

_GROUPS = {  # RE2's "invalid perl operator" argument -> what the user wrote
    "(?=": "look-aheads ((?=...), (?!...)) are not supported",
    "(?!": "look-aheads ((?=...), (?!...)) are not supported",
    "(?<=": "look-behinds ((?<=...), (?<!...)) are not supported",
    "(?<!": "look-behinds ((?<=...), (?<!...)) are not supported",
    "(?>": "atomic groups (?>...) are not supported",
    "(?(": "conditionals (?(...)yes|no) are not supported",
    "(?|": "branch-reset groups (?|...) are not supported",
    "(?#": "comments (?#...) are not supported",
}
_ESCAPES = {  # RE2's "invalid escape sequence" argument -> what to write instead
    "\\Z": "\\Z is not supported: write \\z for the end of the text",
    "\\u": "\\u is not supported: write \\x{00e9} for a character by its code point",
    "\\U": "\\U is not supported: write \\x{1F600} for a character by its code point",
    "\\N": "named characters \\N{...} are not supported: write the character or \\x{...}",
    "\\g": "backreferences (\\g<1>) are not supported",
}
_OPEN_MIN = re.compile(r"\{,(\d+)\}")  # Python 3.11's a{,5} (0 to 5); RE2 reads it as the text "{,5}"


class PatternError(ValueError):
    """A pattern RE2 cannot run; the message says what, and why, in one line (without the pattern)."""


def compile_pattern(pattern: str, case_sensitive: bool = True) -> Any:
    """The pattern compiled by RE2 (``case_sensitive=False``: Unicode case folding, as ``re.IGNORECASE``).

    Raises :class:`PatternError` saying what is wrong: an unsupported construct named with the reason, or RE2's
    own words for a pattern that is no regular expression."""
    import re2

    if not isinstance(pattern, str):
        raise PatternError(f"a pattern is text, not {type(pattern).__name__}")
    open_min = _unescaped(pattern, _OPEN_MIN)
    if open_min:
        raise PatternError(f"{{,{open_min}}} means {{0,{open_min}}} only to Python (RE2 reads it as text): write "
                           f"{{0,{open_min}}} ({WHY}; syntax: {SYNTAX})")
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.log_errors = False  # RE2 would also print the error to stderr; ours is the one line
    options.never_capture = True  # rules only ask whether it matches: groups cost time and say nothing
    options.max_mem = MAX_MEM
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(describe(pattern, detail)) from None


def explained(pattern: str, error: PatternError) -> str:
    """``pattern '(a' is not a regular expression: ...`` or ``pattern '(?=a)': look-aheads ... are not supported``."""
    text = str(error)
    return f"pattern {pattern!r}{' ' if text.startswith('is ') else ': '}{text}"


def describe(pattern: str, detail: str) -> str:
    """One sentence for RE2's parse error ``detail`` ("invalid perl operator: (?=") on ``pattern``."""
    kind, _, arg = detail.partition(": ")
    reason = None
    if kind == "invalid perl operator":
        if arg == "(?P":  # RE2 quotes only "(?P" for (?P=name) and (?P>name)
            reason = ("backreferences ((?P=name)) are not supported" if "(?P=" in pattern
                      else f"{arg}... is not supported")
        elif arg in _GROUPS:
            reason = _GROUPS[arg]
        elif len(arg) == 3 and arg[2].isalpha():
            reason = f"the inline flag {arg}) is not supported: RE2 knows i, m, s and U (for case: case_sensitive)"
    elif kind == "invalid escape sequence":
        if arg[1:].isdigit() and arg[1:] not in ("0",):
            reason = f"backreferences ({arg}) are not supported"
        else:
            reason = _ESCAPES.get(arg, f"the escape {arg} is not supported")
    elif kind == "bad repetition operator" and arg.endswith("+") and arg[:-1] and arg[:-1][-1] in "*+?}":
        reason = f"possessive quantifiers ({arg}) are not supported"
    elif kind == "invalid repetition size" and any(int(n) > 1000 for n in re.findall(r"\d+", arg)):
        reason = f"counted repetitions over 1000 ({arg}) are not supported"
    elif detail.startswith("pattern too large"):
        return (f"the pattern is too large for RE2's {MAX_MEM >> 20} MiB per rule: split it into several rules "
                f"({WHY})")
    if reason is None:  # a plain syntax error: say it like Python's re would, in RE2's words
        return f"is not a regular expression: {detail} (syntax: {SYNTAX})"
    return f"{reason} ({WHY}; syntax: {SYNTAX})"


def _unescaped(pattern: str, construct: re.Pattern) -> str | None:
    """The first group of ``construct`` where it starts outside a character class and is not escaped."""
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]" or (pattern[i - 1] in "[^" and _class_start(pattern, i))
        elif char == "[":
            in_class = True
        else:
            found = construct.match(pattern, i)
            if found:
                return found.group(1)
        i += 1
    return None


def _class_start(pattern: str, i: int) -> bool:
    """Whether the ``]`` at ``i`` is the first character of its class (``[]a]``, ``[^]a]``: a literal ``]``)."""
    j = i - 1
    if pattern[j] == "^":
        j -= 1
    return j >= 0 and pattern[j] == "[" and (j == 0 or pattern[j - 1] != "\\")
