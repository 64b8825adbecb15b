"""Rules as labelling functions (tasks/lib/rules.py) and sources over whole rows (tasks/labeling.apply_sources),
on hand-made frames: where each kind fires, what it returns, and the one-line errors naming rule and column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from weakflow.tasks.lib.config import FilesData, RuleConfig
from weakflow.tasks.lib.labeling import LabelingFunctionError, apply_sources, votes_matrix
from weakflow.tasks.lib.rules import from_config, keywords, regex, threshold

HERE = "tests.code.test_rules"
SEEN: list[list[str]] = []  # the columns each call of sees_the_row was given

TEXT = pd.Series([
    "Free entry in 2 a wkly comp",  # 0: "Free" at the start, upper case
    "freedom is priceless",  # 1: "free" inside a word
    "carefree days",  # 2: "free" at a word's end
    "totally FREE!",  # 3: punctuation after it
    "Please CALL   now",  # 4: the phrase across a run of spaces
    "call\nnow",  # 5: ...and a line break
    "call nowhere",  # 6: the phrase's last word is longer
    "recall now",  # 7: the phrase's first word inside a word
    None,  # 8: missing
    np.nan,  # 9: missing
], dtype=object)


def frame() -> pd.DataFrame:
    return pd.DataFrame({"text": TEXT, "amount": [0.0, 1, 5, 10, 20, np.nan, 7, 3, 4, 100],
                         "label": ["spam"] * 10, "weak": ["ham"] * 10})


def sees_the_row(batch: pd.DataFrame) -> np.ndarray:
    """An LF reading text and numbers: 'ham' where the text is short and the amount small."""
    SEEN.append(list(batch.columns))
    short = batch["text"].str.len().lt(12).fillna(False).to_numpy(dtype=bool)
    return np.where(short & (batch["amount"] < 6).to_numpy(), "ham", "")


def fired(values: np.ndarray, abstain=-1) -> list[int]:
    return np.flatnonzero(values != abstain).tolist()


def test_keywords_match_whole_words_case_insensitively():
    rule = keywords("text", ["free"], 1)
    assert fired(rule(frame())) == [0, 3]  # not "freedom", not "carefree", never a missing text


def test_keywords_match_phrases_across_whitespace_not_inside_words():
    assert fired(keywords("text", ["call now"], 1)(frame())) == [4, 5]
    assert fired(keywords("text", ["free", "call now"], 1)(frame())) == [0, 3, 4, 5]


def test_regex_is_case_insensitive_unless_asked():
    assert fired(regex("text", r"call\s+now", 1)(frame())) == [4, 5, 6, 7]  # a regex finds it anywhere
    assert fired(regex("text", "FREE", 1, case_sensitive=True)(frame())) == [3]
    assert fired(regex("text", "FREE", 1)(frame())) == [0, 1, 2, 3]


def test_word_edges_spaces_and_case_folding_match_pythons_unicode_rules():
    """Rules run on RE2, whose \\w and \\s are ASCII: a keyword's edges and a phrase's gaps must still be
    Python's Unicode \\w and \\s (so "café" is a whole word in "un café!", not in "cafés"), and
    case-insensitive patterns must fold case as re.IGNORECASE does. Checked on every code point against
    Python's own re (code points Python's Unicode tables leave unassigned are left out: RE2's are newer)."""
    import re
    import sys
    import unicodedata

    chars = [chr(c) for c in range(sys.maxunicode + 1)
             if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn"]
    rows = pd.DataFrame({"text": [f"{c}ab" for c in chars] + [f"ab{c}" for c in chars] + [f"a{c}b" for c in chars]})
    n = len(chars)
    word = np.array([re.match(r"\w", c) is not None for c in chars])
    space = np.array([re.match(r"\s", c) is not None for c in chars])
    edge = keywords("text", ["ab"], 1)(rows) == 1
    assert (edge[:n] == ~word).all() and (edge[n:2 * n] == ~word).all()  # fires unless a word character touches it
    gap = keywords("text", ["a b"], 1)(rows.iloc[2 * n:]) == 1
    assert (gap == space).all()
    cafe = pd.DataFrame({"text": ["un CAFÉ!", "cafés", "écafé", "café"]})
    assert fired(keywords("text", ["café"], 1)(cafe)) == [0, 3]

    folded = [(c, v) for c in chars for v in {c.upper(), c.lower(), c.title(), c.casefold(), c.swapcase()} - {c}]
    differ = set()
    by_char: dict[str, list[str]] = {}
    for c, v in folded:
        by_char.setdefault(c, []).append(v)
    for c, variants in by_char.items():
        got = regex("text", re.escape(c), 1)(pd.DataFrame({"text": variants})) == 1
        want = np.array([re.search(re.escape(c), v, re.IGNORECASE) is not None for v in variants])
        differ |= {c for g, w in zip(got, want) if g != w}
    # Only the Turkish dotted/dotless i: Python's re folds them with i/I, Unicode's simple case folding
    # (RE2's) does not. README "Weak label sources" says so.
    assert differ == {"\u0130", "\u0131"}


def test_threshold_above_below_and_band_are_strict_and_nan_never_fires():
    data = frame()  # amount: 0, 1, 5, 10, 20, NaN, 7, 3, 4, 100
    assert fired(threshold("amount", 1, above=5)(data)) == [3, 4, 6, 9]
    assert fired(threshold("amount", 1, below=3)(data)) == [0, 1]
    assert fired(threshold("amount", 1, above=3, below=10)(data)) == [2, 6, 8]


def test_missing_text_never_fires_and_an_all_empty_column_is_no_error():
    data = pd.DataFrame({"text": [np.nan, np.nan]})  # an all-empty CSV text column reads as float NaN
    assert fired(keywords("text", ["free"], 1)(data)) == []
    assert fired(regex("text", ".*", 1)(frame())) == list(range(8))  # even ".*" skips None and NaN


def test_integer_and_string_labels_keep_their_type():
    ints = keywords("text", ["free"], 1)(frame())
    assert ints.dtype == np.int64 and ints.tolist() == [1, -1, -1, 1, -1, -1, -1, -1, -1, -1]
    names = keywords("text", ["free"], "spam", abstain="")(frame())
    assert names.dtype == object and names.tolist() == ["spam", "", "", "spam", "", "", "", "", "", ""]
    mixed = keywords("text", ["free"], "spam", abstain=-1)(frame())
    assert mixed.tolist()[:2] == ["spam", -1]


def test_names_are_readable_and_from_config_uses_the_rule_name():
    assert keywords("text", ["free", "win", "cash", "prize"], 1).__name__ == "text has free/win/cash/..."
    assert regex("text", r"\d{5,}", 1).__name__ == r"text ~ /\d{5,}/"
    assert threshold("amount", 1, above=3, below=10).__name__ == "amount > 3 and amount < 10"
    rule = from_config(RuleConfig(name="prize", kind="keywords", column="text", label="spam", keywords=["free"]), "")
    assert rule.__name__ == "prize" and rule(frame()).tolist()[:2] == ["spam", ""]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: keywords("body", ["free"], 1, name="k"),
     "rule 'k' (keywords) reads column 'body', which is not in the data"),
    (lambda: threshold("text", 1, above=1, name="t"),
     "rule 't' (threshold) needs numbers in column 'text', which holds text values, not numbers"),
    (lambda: keywords("amount", ["free"], 1, name="k"),
     "rule 'k' (keywords) needs text in column 'amount', which holds float64 values, not text"),
])
def test_a_rule_that_cannot_read_its_column_names_rule_and_column(make, message):
    with pytest.raises(LabelingFunctionError) as info:
        make()(frame())
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: threshold("amount", 1, above=10, below=5, name="t"), "rule 't': above=10 >= below=5 never fires"),
    (lambda: threshold("amount", 1, name="t"), "rule 't': a threshold needs above, below or both"),
    (lambda: keywords("text", ["free", "  "], 1, name="k"), "rule 'k': keyword '  ' is empty"),
    (lambda: regex("text", "(", 1, name="r"), "rule 'r': pattern '(' is not a regular expression"),
    (lambda: keywords("text", ["free"], -1, name="k"), "rule 'k' votes -1, which is the abstain value"),
])
def test_a_rule_that_can_never_work_is_refused_when_made(make, message):
    with pytest.raises(LabelingFunctionError, match="^" + message.replace("(", r"\(")):
        make()


SPEC = FilesData(train_path="t.csv", test_path="s.csv", feature_columns=["amount"], text_columns=["text"],
                 weak_label_columns=["weak"])
RULES = [RuleConfig(name="free", kind="keywords", column="text", label="spam", keywords=["free", "call now"]),
         RuleConfig(name="big", kind="threshold", column="amount", label="spam", above=15)]


def test_sources_see_every_input_column_and_never_the_labels():
    SEEN.clear()
    out = apply_sources(frame(), SPEC, RULES, [f"{HERE}:sees_the_row"], ["ham", "spam"], "", batch_size=4)
    assert SEEN == [["amount", "text"]] * 3  # three batches; no "label", no "weak" column
    assert list(out.columns) == ["rule:free", "rule:big", "lf:sees_the_row"]
    assert out["rule:free"].tolist() == ["spam", "", "", "spam", "spam", "spam", "", "", "", ""]
    assert out["rule:big"].tolist() == [""] * 4 + ["spam"] + [""] * 4 + ["spam"]
    assert out["lf:sees_the_row"].tolist() == [""] * 7 + ["ham"] + [""] * 2  # text < 12 chars and amount < 6
    assert votes_matrix(out, list(out.columns), ["ham", "spam"], "")[[0, 4, 7]].tolist() == [
        [1, -1, -1], [1, 1, -1], [-1, -1, 0]]


@pytest.mark.parametrize(("rule", "message"), [
    (RuleConfig(name="peek", kind="keywords", column="label", label="spam", keywords=["spam"]),
     ("rule 'peek' reads column 'label', which is not an input column: a rule sees only data.feature_columns + "
      "data.text_columns, never labels (input columns: ['amount', 'text'])")),
    (RuleConfig(name="gone", kind="regex", column="body", label="spam", pattern="x"),
     "rule 'gone' reads column 'body', which is not in the data (input columns: ['amount', 'text'])"),
    (RuleConfig(name="typo", kind="regex", column="text", label="spma", pattern="x"),
     "rule 'typo' votes 'spma', which is not a class (classes: ['ham', 'spam'])"),
    (RuleConfig(name="int", kind="regex", column="text", label=1, pattern="x"),
     "rule 'int' votes 1, which is not a class (classes: ['ham', 'spam'])"),
])
def test_rules_are_checked_against_the_data_and_classes_first(rule, message):
    with pytest.raises(LabelingFunctionError) as info:
        apply_sources(frame(), SPEC, [rule], [], ["ham", "spam"], "")
    assert str(info.value) == message


def test_a_rule_name_twice_is_refused():
    with pytest.raises(LabelingFunctionError, match=r"rule name\(s\) \['free'\] used more than once"):
        apply_sources(frame(), SPEC, [RULES[0], RULES[0]], [], ["ham", "spam"], "")


def test_string_votes_map_to_class_indices_with_every_kind_of_empty_as_abstain():
    votes = pd.DataFrame({"a": ["spam", "", None, np.nan, "ham", "-1"]})
    assert votes_matrix(votes, ["a"], ["ham", "spam"], -1)[:, 0].tolist() == [1, -1, -1, -1, 0, -1]
    with pytest.raises(ValueError, match=r"vote column 'a' holds 'Spam', outside classes \['ham', 'spam'\]"):
        votes_matrix(pd.DataFrame({"a": ["spam", "Spam"]}), ["a"], ["ham", "spam"], "")


@pytest.mark.parametrize(("pattern", "why"), [
    ("(?=free)win", "look-aheads ((?=...), (?!...)) are not supported"),
    ("win(?!ner)", "look-aheads ((?=...), (?!...)) are not supported"),
    (r"(?<=£)\d+", "look-behinds ((?<=...), (?<!...)) are not supported"),
    ("(?<!no )free", "look-behinds ((?<=...), (?<!...)) are not supported"),
    (r"(\w)\1", r"backreferences (\1) are not supported"),
    ("(?P<x>a)(?P=x)", "backreferences ((?P=name)) are not supported"),
    ("a++b", "possessive quantifiers (++) are not supported"),
    ("(?>ab|a)c", "atomic groups (?>...) are not supported"),
    ("(?(1)a|b)", "conditionals (?(...)yes|no) are not supported"),
    (r"free\Z", r"\Z is not supported: write \z for the end of the text"),
    ("x{,3}", "{,3} means {0,3} only to Python (RE2 reads it as text): write {0,3}"),
])
def test_a_construct_rules_cannot_run_in_linear_time_is_a_config_error_naming_the_rule(pattern, why):
    """Python's re accepts each of these; RE2 (linear time, so no rule can hang a run) does not: the config
    is refused when loaded, naming the rule (index and name), its pattern and the construct, on one line."""
    from weakflow.tasks.lib.config import ConfigError, load_config

    rules = ("weak_labels.rules=[{name: fine, kind: keywords, column: text, label: spam, keywords: [win]}, "
             f"{{name: free_offer, kind: regex, column: text, label: spam, pattern: '{pattern}'}}]")
    with pytest.raises(ConfigError) as info:
        load_config(None, [rules])
    (line,) = [x for x in str(info.value).splitlines() if "weak_labels.rules" in x]
    assert line.startswith(f"  - weak_labels.rules.1.pattern = {pattern!r}: ")
    assert f"rule 'free_offer': {why}" in line
    assert "(rules run on RE2, a linear-time engine, so that no pattern can hang a run; syntax: " in line
    with pytest.raises(LabelingFunctionError) as made:  # the Python API says the same
        regex("text", pattern, 1, name="r")
    assert str(made.value).startswith(f"rule 'r': pattern {pattern!r}: {why}")
