"""Can the picture network's embedding tell a copy of a test picture from a look-alike? The question behind a
contamination check by embedding distance, measured on the picture demo's pictures.

The demo's network (``resnet``, width 64, augmentation) is trained for a few epochs on 3,000 shipped training
pictures. For 200 test pictures it then compares, by cosine distance between embeddings (the pooled features that
monitoring logs):

- each picture with a changed copy of itself (re-encoded as JPEG at quality 72, brightened by 0.05, flipped,
  shifted 2 pixels): how far a copy lands;
- each picture with its nearest *other* training picture: how far a distinct look-alike lands;
- the nearest / second-nearest ratio with a copy planted among the training pictures (a copy should stand out
  from the crowd of look-alikes: ratio well below 1).

A distance or ratio separates copies from look-alikes only where the copies' range lies below the look-alikes'.

    python -m bench.picture_embedding [--no-write]
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import publish

CHANGES = (("JPEG quality 72", "jpeg_compression", 0.3), ("brightness +0.05", "brightness", 0.1))


def embeddings(train: int = 3000, epochs: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    import torch

    from weakflow.tasks.core.models import ModelSpec, build_model
    from weakflow.tasks.core.picture_stats import predict_with_embedding
    from weakflow.tasks.core.robustness import corrupt
    from weakflow.tasks.core.training import TrainSettings, fit
    from weakflow.tasks.lib.demo_images import read_fashion

    torch.manual_seed(seed)
    x, y = read_fashion("train")
    pictures, _ = read_fashion("test")
    queries = pictures[:200]
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
    spec = ModelSpec(kind="resnet", num_features=784, num_classes=10, hidden=(64,), image_shape=(1, 28, 28),
                     augment=(0.125, 1.0, 0.1))
    model = fit(build_model(spec), flat(x[:train]), y[:train], TrainSettings(epochs=epochs, batch_size=32, seed=seed)).model

    def embed(a: np.ndarray) -> np.ndarray:
        e = predict_with_embedding(model, a)[1]
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    out = {"train": embed(flat(x[:train])), "query": embed(flat(queries))}
    for name, kind, severity in CHANGES:
        out[name] = embed(corrupt(flat(queries), kind, severity, picture_shape=(1, 28, 28)))
    out["flipped"] = embed(flat(queries[:, :, ::-1]))
    out["shifted 2 px"] = embed(flat(np.roll(queries, 2, axis=2)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    e = embeddings()
    train, query = e.pop("train"), e.pop("query")
    nearest = np.sort(1.0 - query @ train.T, axis=1)
    rows = ["| pair | cosine distance, median | 95th percentile | nearest / second nearest, median |", "|---|---|---|---|",
            f"| a test picture and its nearest other training picture (a look-alike) | {np.median(nearest[:, 0]):.4f} | "
            f"{np.percentile(nearest[:, 0], 95):.4f} | {np.median(nearest[:, 0] / nearest[:, 1]):.2f} |"]
    for name, copies in e.items():
        d = 1.0 - (copies * query).sum(axis=1)
        planted = np.minimum(d, nearest[:, 0])  # the copy joins the training pictures
        second = np.where(d < nearest[:, 0], nearest[:, 0], nearest[:, 1])
        rows.append(f"| a test picture and its copy, {name} | {np.median(d):.4f} | {np.percentile(d, 95):.4f} | "
                    f"{np.median(planted / second):.2f} |")
    body = "\n".join([
        "## Pictures: does the network's embedding tell a copy from a look-alike? (`bench.picture_embedding`)", "",
        "The demo's picture network trained 3 epochs on 3,000 Fashion-MNIST training pictures; 200 test pictures; "
        "cosine distance between the pooled embeddings (what monitoring logs).", "", *rows, "",
        "Where a copy's distance reaches the look-alikes' range, a threshold on embedding distance flags look-alikes "
        "as copies or misses copies; the governance checks therefore use perceptual hashes of the pictures (exact "
        "pixels; near copies within 20 of 256 bits) and no embedding distance.",
    ])
    publish("picture_embedding", body, dry_run=args.no_write)


if __name__ == "__main__":
    main()
