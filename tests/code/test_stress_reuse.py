"""``bench.stress --reuse-references``: the reference columns come from the latest invocation that logged them
for the cell (same epochs), the pipeline column from this run, and a cell without references is refused
in one line. On a real MLflow SQLite store."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from bench import stress

KEY = ("wine", "symmetric", 0.1, 0)
REFERENCES = [c for c in stress.COLUMNS if c != "weakflow"]


def logged(client, eid: str, cell, value: float, invocation: str, epochs: int) -> None:
    out = stress.Outcome(cell, accuracy={c: value for c in stress.COLUMNS}, seconds={c: value for c in stress.COLUMNS})
    stress.log_outcome(client, eid, out, epochs, [], invocation)


def test_reused_references_come_from_the_latest_matching_run_and_merge_in_column_order(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    eid = client.create_experiment("stress")
    args = stress.parse_args(["--datasets", "wine", "--kinds", "symmetric", "--gold", "0.1", "--seeds", "1",
                              "--reuse-references"])
    with pytest.raises(SystemExit, match=r"no earlier run has the reference columns for 1 cell x seed run\(s\)"):
        stress.reference_outcomes(client, eid, [KEY], args)
    cell = stress.make_cell(stress.load_dataset("wine"), "symmetric", 0.1, 0)
    logged(client, eid, cell, 0.5, "2026-01-01T00:00:00 older", args.epochs)
    logged(client, eid, cell, 0.7, "2026-01-02T00:00:00 newer", args.epochs)
    logged(client, eid, cell, 0.9, "2026-01-03T00:00:00 other epochs", args.epochs + 1)  # not comparable

    source, refs = stress.reference_outcomes(client, eid, [KEY], args)
    assert source == "2026-01-02T00:00:00 newer"
    assert refs[KEY].accuracy == {c: 0.7 for c in REFERENCES}  # the pipeline column is never reused

    mine = stress.Outcome(cell, accuracy={"weakflow": 0.95}, seconds={"weakflow": 3.0})
    merged = stress.with_references(mine, refs, list(stress.COLUMNS))
    assert list(merged.accuracy) == list(stress.COLUMNS)
    assert merged.accuracy["weakflow"] == 0.95 and merged.accuracy["oracle"] == 0.7
    assert mine.accuracy == {"weakflow": 0.95}  # the run's own outcome is left as it was
