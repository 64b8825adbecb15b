"""Applying rules to a million SMS-like rows: rows/s and peak memory, one process and in shards.

Rows are messages of the SMS Spam Collection shipped with weakflow (``tasks/demo_data``) sampled with replacement, plus a numeric ``length`` column
(characters). Six rules, as ``weak_labels.rules`` writes them: three keywords, two regex, one threshold.
Each configuration runs in a fresh process (``--child``), so its peak RSS is its own: the parent's
(data + votes) and, sharded, the largest spawned worker's (its chunk + its votes).
``tasks.lfs.apply_sharded`` is the code ``weakflow lfs --shards K`` runs.

    python -m bench.lfs
    python -m bench.lfs --rows 100000 --shards 2 --no-write
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from bench.common import ROOT, publish

RULES = [
    {"name": "spam_prize", "kind": "keywords", "column": "text", "label": "spam",
     "keywords": ["free", "won", "winner", "win", "prize", "claim", "cash", "award", "guaranteed"]},
    {"name": "spam_call_to_action", "kind": "keywords", "column": "text", "label": "spam",
     "keywords": ["call now", "txt", "reply", "text stop", "send stop", "subscribe", "unsubscribe", "opt out"]},
    {"name": "ham_chat", "kind": "keywords", "column": "text", "label": "ham",
     "keywords": ["ok", "lol", "sorry", "home", "later", "love", "haha", "see you", "tonight"]},
    {"name": "spam_money", "kind": "regex", "column": "text", "label": "spam", "pattern": r"[£$€]\s?\d"},
    {"name": "spam_number", "kind": "regex", "column": "text", "label": "spam", "pattern": r"\d{5,}"},
    {"name": "long_message", "kind": "threshold", "column": "length", "label": "spam", "above": 140},
]


def rows_frame(rows: int, seed: int = 0):  # -> pd.DataFrame
    """``rows`` messages drawn with replacement from the shipped SMS file, with their length."""
    import numpy as np
    import pandas as pd

    from weakflow.tasks.lib.demo_text import read_sms_spam

    sms = read_sms_spam()["text"].to_numpy(dtype=object)
    text = sms[np.random.default_rng(seed).integers(0, len(sms), rows)]
    frame = pd.DataFrame({"text": text})
    frame["length"] = frame["text"].str.len().astype(np.int64)
    return frame


def measure(rows: int, shards: int) -> dict:
    """In this (fresh) process: build the rows, apply the rules, report time and peak RSS (MiB)."""
    from weakflow.tasks.lib.config import FilesData, RuleConfig
    from weakflow.tasks.lfs import apply_sharded

    frame = rows_frame(rows)
    data_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    spec = FilesData(train_path="bench.csv", test_path="bench.csv", feature_columns=["length"], text_columns=["text"])
    rules = [RuleConfig(**r) for r in RULES]
    start = time.perf_counter()
    votes = apply_sharded(frame, spec, rules, [], ["ham", "spam"], "", shards)
    seconds = time.perf_counter() - start
    fired = {c: round(float((votes[c] != "").mean()), 4) for c in votes.columns}
    return {"rows": rows, "shards": shards, "seconds": seconds, "rows_per_s": rows / seconds, "data_rss_mib": data_rss,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mib": (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
                                    if shards > 1 else None),
            "coverage": fired}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=2, help="the sharded configuration's shards (default 2)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # shards, in a fresh process
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.rows, args.child)))
        return
    results = []
    for shards in (1, args.shards):
        out = subprocess.run([sys.executable, "-m", "bench.lfs", "--rows", str(args.rows), "--child", str(shards)],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    lines = ["## Labelling functions on a million rows: `weakflow lfs` (one process and sharded)", "",
             (f"Six rules (3 keywords, 2 regex, 1 threshold) applied by `tasks.lfs.apply_sharded` (what "
              f"`weakflow lfs --shards K` runs) to {args.rows:,} SMS messages sampled with replacement from the "
              "SMS Spam Collection, with their length."), "",
             ("| processes | seconds | rows/s | peak RSS, parent (MiB) | RSS with the rows built, before applying "
              "(MiB) | peak RSS, largest worker (MiB) |"),
             "|---|---|---|---|---|---|"]
    for r in results:
        worker = f"{r['worker_peak_rss_mib']:.0f}" if r["worker_peak_rss_mib"] is not None else "-"
        lines.append(f"| {r['shards']} | {r['seconds']:.2f} | {r['rows_per_s']:,.0f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['data_rss_mib']:.0f} | {worker} |")
    lines += ["", "Rule coverage: " + ", ".join(f"{k} {v:.1%}" for k, v in results[0]["coverage"].items()) + "."]
    publish("lfs", "\n".join(lines), dry_run=args.no_write)


if __name__ == "__main__":
    main()
