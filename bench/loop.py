"""Training-loop overhead: the project's `fit` versus a bare PyTorch loop on the same network, data,
batch size and optimizer, in samples per second; plus CLID-MU's step cost. Runs wherever torch runs
(no Prefect/MLflow), on CUDA when present (bf16 autocast, channels_last for the CNN).

    python -m bench.loop [--epochs 60] [--repeats 3]   (shorter runs are dominated by a shared machine's hiccups)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from weakflow.tasks.core.clid import ClidMu, ClidMuSettings
from weakflow.tasks.core.device import autocast, resolve_device
from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.training import TrainSettings, fit


def data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


def bare_loop(spec: ModelSpec, x: np.ndarray, y: np.ndarray, epochs: int, batch: int, device: torch.device) -> float:
    """The reference: resident tensors, randperm batches, forward / CE / backward / AdamW step."""
    torch.manual_seed(0)
    model = build_model(spec).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
    _sync(device)
    t = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), device=device)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            with autocast(device):
                loss = F.cross_entropy(model(xt[idx]).float(), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync(device)
    return len(x) * epochs / (time.perf_counter() - t)


def project_loop(spec: ModelSpec, x: np.ndarray, y: np.ndarray, epochs: int, batch: int, device: torch.device,
                 rule_factory=None) -> float:
    model = build_model(spec)
    _sync(device)
    t = time.perf_counter()
    fit(model, x, y, TrainSettings(epochs=epochs, batch_size=batch, device=str(device)),
        rule=rule_factory() if rule_factory else None)
    _sync(device)
    return len(x) * epochs / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    device = resolve_device("auto")
    x, y = data()
    x, y = x[:1400], y[:1400]
    meta = torch.as_tensor(x[:1000], device=device)
    rows = []
    for name, spec in (("CNN (digits 8x8)", ModelSpec("cnn", 64, 10, hidden=(64,), image_shape=(1, 8, 8))),
                       ("MLP 256-256", ModelSpec("mlp", 64, 10, hidden=(256, 256)))):
        bare_loop(spec, x, y, 2, args.batch, device)  # warm-up
        project_loop(spec, x, y, 2, args.batch, device)
        # bare and project runs interleaved, the ratio taken per pair: a machine whose speed drifts over the
        # minutes (a shared VM) would otherwise bias whichever block ran in the slower minutes
        pairs = [(bare_loop(spec, x, y, args.epochs, args.batch, device),
                  project_loop(spec, x, y, args.epochs, args.batch, device)) for _ in range(args.repeats)]
        bare, ours = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        ratio = statistics.median(o / b for b, o in pairs)
        variants = {"full1": ClidMuSettings(virtual_scope="full", meta_interval=1),
                    "full2": ClidMuSettings(virtual_scope="full", meta_interval=2),
                    "head1": ClidMuSettings(virtual_scope="head", meta_interval=1)}
        clid = {k: statistics.median(project_loop(spec, x, y, args.epochs, args.batch, device,
                                                  lambda s=s: ClidMu(meta, s))
                                     for _ in range(args.repeats)) for k, s in variants.items()}
        rows.append(f"| {name} | {bare:,.0f} | {ours:,.0f} | **{ratio:.2f}** ({', '.join(f'{o / b:.2f}' for b, o in pairs)}) | {ours / clid['full1']:.2f}× "
                    f"| {ours / clid['full2']:.2f}× | {ours / clid['head1']:.2f}× |")
    body = (
        f"## Training loop overhead ({device.type.upper()}, batch {args.batch}, {args.epochs} epochs on 1,400 digits rows, "
        f"median of {args.repeats})\n\n"
        "`fit` adds a one-cycle LR schedule, per-epoch best-state copies and the update-rule indirection over a "
        "bare loop (resident tensors, randperm batches, AdamW, same network). Target ratio ≥ 0.9: the median of "
        "the per-repeat ratios, bare and `fit` run back to back in each repeat (each repeat's ratio in brackets). The last three "
        "columns are the cost of a CLID-MU epoch relative to a plain epoch of `fit` (target ≤ 3×): the look-ahead "
        "through every parameter with a meta step every step or every 2nd step, and the head-only look-ahead "
        f"(`virtual_scope: head`) every step. Default: `virtual_scope: {ClidMuSettings().virtual_scope}`, "
        f"meta step every {ClidMuSettings().meta_interval}.\n\n"
        "| network | bare loop samples/s | `fit` samples/s | ratio (per repeat) | CLID-MU full, every step | CLID-MU full, every 2nd step "
        "| CLID-MU head-only, every step |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    if args.no_write:
        print(body)
    else:
        from bench.common import write_section

        write_section("loop-" + device.type, body, module="loop")


if __name__ == "__main__":
    main()
