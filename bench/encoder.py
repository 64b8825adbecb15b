"""What the pretrained text encoder costs: seconds per 1,000 distinct texts and the process's memory, beside
the hashed n-gram featurisation on the same texts.

The texts are the shipped SMS collection's distinct messages (about 5,100), encoded the way the pipeline
does (``tasks.core.encoder.EncoderFeaturizer``, 32 texts per forward pass, no cache), with torch on 1 thread
and on every core; the hashed featuriser is fitted and applied to the same texts.

    python -m bench.encoder
    python -m bench.encoder --texts 500 --no-write   # smoke
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import publish


def peak_mib() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=None, help="at most this many distinct messages (default all)")
    parser.add_argument("--no-write", action="store_true", help="print the section; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    import torch

    from weakflow.tasks.core import encoder as enc
    from weakflow.tasks.core.text import TextFeaturizer
    from weakflow.tasks.lib.demo_text import read_sms_spam

    texts = pd.DataFrame({"text": read_sms_spam()["text"].drop_duplicates().to_numpy()})
    if args.texts:
        texts = texts.head(args.texts)
    n = len(texts)
    before = peak_mib()
    t = time.perf_counter()
    hashed = TextFeaturizer.fit(texts, ["text"])
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    hashed.transform(texts)
    hashed_s = time.perf_counter() - t
    rows = [("hashed n-grams (fit on the same texts)", fit_s, hashed_s, torch.get_num_threads())]
    with tempfile.TemporaryDirectory() as tmp:
        featurizer = enc.EncoderFeaturizer.fit(texts, ["text"], enc.unpack(Path(tmp)))
        featurizer.cache = None
        t = time.perf_counter()
        enc.load(featurizer.folder)
        load_s = time.perf_counter() - t
        cores = torch.get_num_threads()
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            featurizer.transform(texts.head(64))  # warm
            t = time.perf_counter()
            featurizer.transform(texts)
            rows.append((f"all-MiniLM-L6-v2, {threads} torch thread(s)", load_s, time.perf_counter() - t, threads))
        torch.set_num_threads(cores)
    lengths = texts["text"].str.len()
    lines = ["## Text featurisation cost: the pretrained encoder against the hashed n-grams (`bench.encoder`)", "",
             f"{n:,} distinct SMS messages (median {lengths.median():.0f} characters, longest {lengths.max():,}), "
             "featurised as the pipeline does, no cache; the encoder at 32 texts per forward pass.", "",
             "| featurisation | fit or load s | featurise s | s per 1,000 texts | texts/s |", "|---|---|---|---|---|"]
    for name, setup, seconds, _ in rows:
        lines.append(f"| {name} | {setup:.1f} | {seconds:.1f} | {seconds / n * 1000:.2f} | {n / seconds:,.0f} |")
    lines += ["", f"Peak resident memory of the process: {peak_mib():,.0f} MiB, after both featurisations ran in it "
              f"(before either: {before:,.0f} MiB; the encoder's weights file is 87 MiB)."]
    publish("encoder", "\n".join(lines), dry_run=args.no_write)


if __name__ == "__main__":
    main()
