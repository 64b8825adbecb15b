"""The run summary's weak_labels line names every source it can, and counts the ones it leaves out."""

from __future__ import annotations

import re

import pandas as pd

from weakflow.tasks.lib.results import source_accuracies


def sources(n: int) -> pd.DataFrame:
    """``n`` sources in the configured order; source i covers (i + 1)% of the rows, so the most-covering
    source comes last in the config."""
    return pd.DataFrame({"source": [f"rule:r{i}" for i in range(n)],
                         "coverage": [(i + 1) / 100 for i in range(n)],
                         "accuracy": [0.5 + i / 100 for i in range(n)],
                         "accuracy_low": [0.4] * n, "accuracy_high": [0.6] * n})


def test_past_six_sources_the_line_says_how_many_more_and_keeps_the_most_covering():
    line = source_accuracies(sources(9))
    shown = re.findall(r"(rule:r\d+) ", line.split(" … ")[0])
    assert shown == ["rule:r8", "rule:r7", "rule:r6", "rule:r5", "rule:r4", "rule:r3"]  # highest coverage first
    assert "rule:r8 0.58 [0.40, 0.60]" in line
    assert " … and 3 more " in line and "weak_labels/sources.json" in line


def test_up_to_six_sources_are_all_shown_without_a_count():
    line = source_accuracies(sources(6).assign(accuracy=[0.5, None, 0.7, 0.8, 0.9, 1.0]))
    assert line.count("rule:") == 6 and "more" not in line
    assert "rule:r1 n/a" in line
