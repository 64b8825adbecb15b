"""Rules: labelling functions written as data (``weak_labels.rules``), or called from Python directly.

Each helper returns a callable ``f(batch: DataFrame) -> np.ndarray``: ``label`` on the rows where the rule
fires, ``abstain`` elsewhere; missing values (NaN, None) never fire. Every rule reads one column in one pass (a
pattern compiled by RE2, a linear-time engine, so no pattern can hang a run: tasks/lib/patterns.py; or a
vectorised numeric comparison, or a set lookup of a cell's tags), and is a small picklable object, so processes
started with spawn can run it too::

    from weakflow.tasks.lib.rules import keywords, regex, tags, threshold
    prize = keywords("text", ["free", "call now"], "spam", abstain="")
    prize(batch)   # array(['spam', '', ...], dtype=object)
    shirt = tags("tags", ["shirt", "blouse"], "shirt", abstain="")   # "Shirt; cotton" fires, "t-shirt" does not
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import re

import numpy as np
import pandas as pd

from weakflow.tasks.lib.config import RuleConfig
from weakflow.tasks.lib.data import DataError
from weakflow.tasks.lib.patterns import SPACE_CHARS, WORD_CHARS, PatternError, compile_pattern, explained


class LabelingFunctionError(DataError):
    """A labelling function could not be loaded, raised, or returned something unusable.

    A DataError, so the run stops before training and registers nothing, like bad data does."""


NOT_WORD = rf"[^{WORD_CHARS}]"  # what may touch a keyword on either side: no letter, digit or underscore, any script


class Rule:
    """One named rule over one column. Subclasses say where it fires (:meth:`fires`)."""

    kind = "rule"

    def __init__(self, name: str, column: str, label: Any, abstain: Any) -> None:
        self.__name__ = name
        self.column = column
        self.label = int(label) if isinstance(label, np.integer) else label
        self.abstain = int(abstain) if isinstance(abstain, np.integer) else abstain
        if type(self.label) is type(self.abstain) and self.label == self.abstain:
            raise LabelingFunctionError(f"rule {name!r} votes {label!r}, which is the abstain value")

    def __call__(self, batch: pd.DataFrame) -> np.ndarray:
        if self.column not in batch.columns:
            raise LabelingFunctionError(f"rule {self.__name__!r} ({self.kind}) reads column {self.column!r}, which "
                                        f"is not in the data (columns: {list(batch.columns)[:20]})")
        fired = self.fires(batch[self.column])
        if isinstance(self.label, int) and isinstance(self.abstain, int):
            return np.where(fired, self.label, self.abstain).astype(np.int64)
        out = np.full(len(fired), self.abstain, dtype=object)
        out[fired] = self.label
        return out

    def fires(self, values: pd.Series) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.kind} rule {self.__name__!r} on {self.column!r} -> {self.label!r}>"


class _TextRule(Rule):
    """Fires where its RE2 pattern is found in the text (``search``); NaN, None and non-text cells never fire."""

    pattern: Any  # re2's compiled pattern

    def fires(self, values: pd.Series) -> np.ndarray:
        if values.isna().all():  # an all-empty text column reads as float NaN
            return np.zeros(len(values), dtype=bool)
        if not (values.dtype == object or isinstance(values.dtype, pd.StringDtype)):
            raise LabelingFunctionError(f"rule {self.__name__!r} ({self.kind}) needs text in column {self.column!r}, "
                                        f"which holds {values.dtype} values, not text")
        # One RE2 search per cell, on its UTF-8 bytes (re2 then skips mapping offsets back to characters): faster
        # than pandas' str.contains with Python's re (numbers in README, "Weak label sources").
        search = self.pattern.search
        return np.fromiter((isinstance(v, str) and search(v.encode("utf-8", "surrogatepass")) is not None
                            for v in values.tolist()), dtype=bool, count=len(values))


class Keywords(_TextRule):
    kind = "keywords"

    def __init__(self, name: str, column: str, words: Sequence[str], label: Any, abstain: Any) -> None:
        super().__init__(name, column, label, abstain)
        self.words = list(words)
        self.pattern = keyword_pattern(self.words, name)


class Regex(_TextRule):
    kind = "regex"

    def __init__(self, name: str, column: str, pattern: str, label: Any, abstain: Any, case_sensitive: bool) -> None:
        super().__init__(name, column, label, abstain)
        try:
            self.pattern = compile_pattern(pattern, case_sensitive)
        except PatternError as exc:
            raise LabelingFunctionError(f"rule {name!r}: {explained(pattern, exc)}") from None


class Threshold(Rule):
    kind = "threshold"

    def __init__(self, name: str, column: str, label: Any, abstain: Any, above: float | None,
                 below: float | None) -> None:
        super().__init__(name, column, label, abstain)
        if above is None and below is None:
            raise LabelingFunctionError(f"rule {name!r}: a threshold needs above, below or both")
        if above is not None and below is not None and above >= below:
            raise LabelingFunctionError(f"rule {name!r}: above={above} >= below={below} never fires (both must "
                                        "hold; for values outside a band write two rules)")
        self.above, self.below = above, below

    def fires(self, values: pd.Series) -> np.ndarray:
        if not pd.api.types.is_numeric_dtype(values.dtype):
            held = "text" if values.dtype == object or isinstance(values.dtype, pd.StringDtype) else values.dtype
            raise LabelingFunctionError(f"rule {self.__name__!r} (threshold) needs numbers in column {self.column!r}, "
                                        f"which holds {held} values, not numbers")
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        fired = np.ones(len(numbers), dtype=bool)
        with np.errstate(invalid="ignore"):  # NaN compares False: a missing value never fires
            if self.above is not None:
                fired &= numbers > self.above
            if self.below is not None:
                fired &= numbers < self.below
        return fired


TAG_SPLIT = re.compile(r"[;,|]")  # what separates the tags of a cell ("shirt;cotton;long-sleeve")


def split_tags(cell: str) -> set[str]:
    """A tag cell's tags, each trimmed and case-folded; empty pieces dropped."""
    return {t for t in (piece.strip().casefold() for piece in TAG_SPLIT.split(cell)) if t}


class Tags(Rule):
    """Fires where any of its tags is one of the cell's tags: a whole tag ("shirt" is not in "t-shirt;cotton"),
    case and surrounding spaces ignored; NaN, None and non-text cells never fire."""

    kind = "tags"

    def __init__(self, name: str, column: str, wanted: Sequence[str], label: Any, abstain: Any) -> None:
        super().__init__(name, column, label, abstain)
        self.tags = list(wanted)
        bad = [t for t in self.tags if not isinstance(t, str) or not t.strip() or TAG_SPLIT.search(t)]
        if not self.tags or bad:
            raise LabelingFunctionError(f"rule {name!r}: tags needs one or more non-empty tags without a separator "
                                        f"(; , |){f', found {bad}' if bad else ''}")
        self.wanted = frozenset(t.strip().casefold() for t in self.tags)

    def fires(self, values: pd.Series) -> np.ndarray:
        if values.isna().all():  # an all-empty tag column reads as float NaN
            return np.zeros(len(values), dtype=bool)
        if not (values.dtype == object or isinstance(values.dtype, pd.StringDtype)):
            raise LabelingFunctionError(f"rule {self.__name__!r} (tags) needs text in column {self.column!r}, "
                                        f"which holds {values.dtype} values, not tags")
        wanted = self.wanted
        return np.fromiter((isinstance(v, str) and not wanted.isdisjoint(split_tags(v)) for v in values.tolist()),
                           dtype=bool, count=len(values))


def keyword_pattern(words: Sequence[str], name: str = "keywords") -> Any:
    """One case-insensitive RE2 pattern: any word or phrase, not touching another word character (Unicode, as
    Python's ``\\w``) on either side ("free" finds "Free entry", not "freedom"); a phrase's spaces match any run
    of whitespace. RE2 has no look-arounds, so the neighbours are matched (a rule only asks whether it fires)."""
    import re2

    parts = []
    for word in words:
        pieces = str(word).split()
        if not pieces:
            raise LabelingFunctionError(f"rule {name!r}: keyword {word!r} is empty")
        parts.append(f"[{SPACE_CHARS}]+".join(re2.escape(p) for p in pieces))
    parts.sort(key=len, reverse=True)  # the longest alternative first ("call now" before "call")
    try:
        # only the words ignore case: a case-folded [^\p{L}...] would lose U+0345, which folds to a letter
        return compile_pattern(f"(?:^|{NOT_WORD})(?i:{'|'.join(parts)})(?:{NOT_WORD}|$)", case_sensitive=True)
    except PatternError as exc:  # only size can fail: every word is escaped
        raise LabelingFunctionError(f"rule {name!r}: {len(parts)} keywords: {exc}") from None


def keywords(column: str, words: Sequence[str], label: Any, abstain: Any = -1, name: str | None = None) -> Keywords:
    """Votes ``label`` where any of ``words`` (words or phrases, case-insensitive) appears whole in ``column``."""
    if not words:
        raise LabelingFunctionError(f"rule {name or column!r}: keywords needs at least one word")
    shown = "/".join(str(w) for w in list(words)[:3]) + ("/..." if len(words) > 3 else "")
    return Keywords(name or f"{column} has {shown}", column, words, label, abstain)


def regex(column: str, pattern: str, label: Any, abstain: Any = -1, case_sensitive: bool = False,
          name: str | None = None) -> Regex:
    """Votes ``label`` where ``pattern`` (RE2 syntax, case-insensitive by default) is found in ``column``."""
    return Regex(name or f"{column} ~ /{pattern}/", column, pattern, label, abstain, case_sensitive)


def tags(column: str, wanted: Sequence[str], label: Any, abstain: Any = -1, name: str | None = None) -> Tags:
    """Votes ``label`` where any of ``wanted`` is one of the tags in ``column`` (separated by ; , or |)."""
    shown = "/".join(str(t) for t in list(wanted)[:3]) + ("/..." if len(wanted) > 3 else "")
    return Tags(name or f"{column} tagged {shown}", column, wanted, label, abstain)


def threshold(column: str, label: Any, above: float | None = None, below: float | None = None, abstain: Any = -1,
              name: str | None = None) -> Threshold:
    """Votes ``label`` where numeric ``column`` is > ``above`` and/or < ``below`` (both: inside the band)."""
    default = " and ".join(s for s in (f"{column} > {above}" if above is not None else "",
                                       f"{column} < {below}" if below is not None else "") if s)
    return Threshold(name or default, column, label, abstain, above, below)


def from_config(rule: RuleConfig, abstain: Any) -> Rule:
    """The labelling function a ``weak_labels.rules`` entry describes, named by the rule's name."""
    if rule.kind == "keywords":
        return keywords(rule.column, rule.keywords, rule.label, abstain, name=rule.name)
    if rule.kind == "regex":
        return regex(rule.column, rule.pattern or "", rule.label, abstain, rule.case_sensitive, name=rule.name)
    if rule.kind == "tags":
        return tags(rule.column, rule.tags, rule.label, abstain, name=rule.name)
    return threshold(rule.column, rule.label, rule.above, rule.below, abstain, name=rule.name)


def configured_rules(cfg: Any) -> list[RuleConfig]:
    """``weak_labels.rules``, or the text demo's own rules when it runs with none (as the pipeline does)."""
    if cfg.weak_labels.rules or getattr(cfg.data, "source", None) != "demo_text":
        return list(cfg.weak_labels.rules)
    from weakflow.tasks.lib.demo_text import DEMO_RULES

    return list(DEMO_RULES)
