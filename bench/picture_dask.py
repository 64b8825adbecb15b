"""Pictures on a local Dask cluster against the same run in one process (issue 28 point 4, issue 29 point 4).

The picture demo (Fashion-MNIST written as PNG files, ``data.source=demo_images``) with ``--train-size``
pictures, every training table streamed from the decoded cache (``loader.resident_mb=0``), run by the pipeline's
composition twice, each in a fresh process and a fresh workspace (``bench.scale``'s child, so neither run finds
the other's decoded cache): in the run's process (``parallel.runner=local``), and inside a Prefect flow on a local
Dask cluster of ``--workers`` one-thread worker processes (the fold models and the pseudo-labelling shards go to
it as tasks). Per run: wall per stage, peak RSS of the run's own process (the workers' are not counted), test
accuracy of the shipped and of the gold-only model.

    python -m bench.picture_dask                    # 2,000 pictures, 2 workers (about 6 minutes on 2 cores)
    python -m bench.picture_dask --train-size 6000  # the demo's size
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import publish
from bench.scale import run_child

STAGES = ("validate", "gold_only", "weak_train", "pseudo_label", "full_train", "evaluate")


def main(argv: list[str] | None = None) -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the section; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    settings = {"in one process": ["loader.resident_mb=0"],
                f"Dask, {args.workers} workers": ["loader.resident_mb=0", "parallel.runner=dask",
                                                  f"parallel.n_workers={args.workers}"]}
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-picture-dask-") as tmp:
        for i, (name, overrides) in enumerate(settings.items()):
            folder = Path(tmp) / f"run{i}"
            folder.mkdir()
            config = folder / "config.yaml"
            config.write_text(yaml.safe_dump({"data": {"source": "demo_images", "train_size": args.train_size}}))
            runs[name] = run_child("pipeline", config, overrides)
            print(json.dumps({"run": name, **runs[name]}), flush=True)
    lines = [f"## Pictures on a local Dask cluster (`bench.picture_dask`, {args.train_size:,} demo pictures)", "",
             "The picture demo (28x28 grey PNG files, three annotators, 5% gold) with every training table streamed "
             "from the decoded cache (`loader.resident_mb=0`); each run a fresh process and workspace (decoding "
             "included). Peak RSS is the run's own process; the workers' are not counted.", "",
             "| run | wall s | " + " | ".join(f"{s} s" for s in STAGES) + " | peak RSS MiB | shipped % | gold-only % |",
             "|---|---|" + "---|" * len(STAGES) + "---|---|---|"]
    for name, r in runs.items():
        t = r["times"]
        lines.append(f"| {name} | {r['wall']:.0f} | " + " | ".join(f"{t.get(s, 0):.0f}" for s in STAGES)
                     + f" | {r['peak_rss_mib']:,.0f} | {100 * r['shipped_accuracy']:.2f} | "
                     f"{100 * (r['gold_only'] or 0):.2f} |")
    local, dask = runs.values()
    lines += ["", f"Dask over one process: wall {dask['wall'] / local['wall']:.2f}×."]
    publish("picture_dask", "\n".join(lines), args.no_write)


if __name__ == "__main__":
    main()
