"""The picture demo: Fashion-MNIST shipped with weakflow (``tasks/demo_data/fashion_mnist``), written out as PNG
files in the workspace so the pipeline reads real picture files by path, as it would a user's.

12,000 training + 2,000 test pictures, 28x28 grey, 10 classes (MIT; see ``tasks/demo_data/README.md``). Three
simulated annotators of unequal accuracy label the training pictures: when wrong, they mostly pick a look-alike
class (shirt / T-shirt / pullover / coat / dress; sandal / sneaker / ankle boot), and each abstains on some
pictures. A few pictures per class keep their gold label (the annotators saw those too, so each annotator's
accuracy can be measured on gold); some pictures no annotator saw. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from weakflow.tasks.lib.config import DemoImagesData, FilesData

ROW_ID = "row_id"  # the same name as tasks.lib.data.ROW_ID (tasks.lib.data imports this module lazily)
IMAGE = "image"
LABEL = "label"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
LOOK_ALIKE = [[0, 2, 3, 4, 6], [5, 7, 9]]  # class indices people confuse (tops; shoes)
# (name, accuracy when voting, share of pictures abstained on): unequal annotators
ANNOTATORS = (("annotator_a", 0.80, 0.10), ("annotator_b", 0.65, 0.20), ("annotator_c", 0.55, 0.30))
CONFUSE_WITHIN = 0.85  # of an annotator's mistakes on a look-alike class, the share that picks a look-alike
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 12_000),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 2_000)}
SHA256 = {
    "train-images-idx3-ubyte.gz": "4f1c33b33378b899572f889c71b4724e254e80a8b7b42f9b07d23b674ddc91ea",
    "train-labels-idx1-ubyte.gz": "ee11aecb63e8bad3028ccef908a21832fe0bc25c17e06eaac588b0274c97e7d5",
    "t10k-images-idx3-ubyte.gz": "17043763e853bff420d0bcf2a10d81a98e8e2473c1d9269c8732116bd7e41c7e",
    "t10k-labels-idx1-ubyte.gz": "01067416d362b1ad42a3b4e2fe9d1d4fe6c59e37ca43b996bbe9051973940e77",
}
MIN_GOLD_PER_CLASS = 6  # 3 folds x 2
SPLIT_VERSION = 1  # part of the folder key: bump when the simulation below changes


class DemoDataError(RuntimeError):
    """The shipped picture files are missing or not the files weakflow was released with (a broken install)."""


def _read(name: str) -> bytes:
    source = resources.files("weakflow.tasks").joinpath("demo_data", "fashion_mnist", name)
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise DemoDataError(f"the shipped demo pictures {source} cannot be read ({exc}); reinstall weakflow") from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256[name]:
        raise DemoDataError(f"the shipped demo file {source} has sha256 {digest}, expected {SHA256[name]}; "
                            "reinstall weakflow")
    return gzip.decompress(raw)


def read_fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(pictures (n, 28, 28) uint8, labels (n,) int64) of the shipped ``train`` or ``test`` split (IDX format)."""
    images_file, labels_file, n = FILES[split]
    images, labels = _read(images_file), _read(labels_file)
    magic, count, rows, cols = np.frombuffer(images[:16], ">i4")
    if magic != 2051 or count != n or (rows, cols) != (28, 28) or np.frombuffer(labels[:8], ">i4")[0] != 2049:
        raise DemoDataError(f"the shipped demo file {images_file} or {labels_file} has an unexpected header")
    x = np.frombuffer(images, np.uint8, offset=16).reshape(n, 28, 28)
    return x, np.frombuffer(labels, np.uint8, offset=8).astype(np.int64)


def annotate(y: np.ndarray, accuracy: float, abstain: float, rng: np.random.Generator) -> np.ndarray:
    """One simulated annotator's votes (class indices, -1 = abstained): right with probability ``accuracy``;
    a mistake on a look-alike class picks another look-alike (:data:`CONFUSE_WITHIN`), else any other class."""
    k = len(CLASSES)
    group = {c: g for g in LOOK_ALIKE for c in g}
    votes = y.copy()
    wrong = rng.random(len(y)) >= accuracy
    for i in np.flatnonzero(wrong):
        alike = [c for c in group.get(int(y[i]), []) if c != y[i]]
        if alike and rng.random() < CONFUSE_WITHIN:
            votes[i] = rng.choice(alike)
        else:
            votes[i] = rng.choice([c for c in range(k) if c != y[i]])
    votes[rng.random(len(y)) < abstain] = -1
    return votes


def _key(cfg: DemoImagesData) -> str:
    settings = {"settings": cfg.model_dump(mode="json"), "sha256": SHA256, "split_version": SPLIT_VERSION}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _write_pngs(pictures: np.ndarray, paths: list[Path]) -> None:
    from PIL import Image

    def one(i: int) -> None:
        Image.fromarray(pictures[i], "L").save(paths[i], format="PNG")

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(one, range(len(paths)), chunksize=256))


def materialize_demo_images(cfg: DemoImagesData, root: Path) -> FilesData:
    """Write the picture demo (once per settings): PNG files under ``pictures/``, ``train.parquet`` (``image``: the
    path relative to the folder, ``label`` on gold rows, the annotators' columns, ``row_id``), ``test.parquet``
    (the 2,000 test pictures, labelled) and ``truth.parquet`` (every training picture's true class; benchmarks
    only, the pipeline never reads it). Returns them as user files."""
    folder = Path(root) / f"demo-images-{_key(cfg)}"
    spec = FilesData(train_path=folder / "train.parquet", test_path=folder / "test.parquet",
                     image_columns=[IMAGE], image_root=folder, label_column=LABEL,
                     weak_label_columns=[name for name, _, _ in ANNOTATORS], abstain="", classes=list(CLASSES),
                     seed=cfg.seed)
    if spec.train_path.is_file() and spec.test_path.is_file():
        return spec
    x, y = read_fashion("train")
    x_test, y_test = read_fashion("test")
    rng = np.random.default_rng(cfg.seed)
    rows = np.sort(rng.permutation(len(y))[:cfg.train_size])
    x, y = x[rows], y[rows]
    gold = np.zeros(len(y), dtype=bool)
    for c in range(len(CLASSES)):  # a share of each class, at least MIN_GOLD_PER_CLASS
        members = rng.permutation(np.flatnonzero(y == c))
        gold[members[:max(MIN_GOLD_PER_CLASS, round(cfg.gold_fraction * len(members)))]] = True
    unseen = ~gold & (rng.random(len(y)) < cfg.unlabeled_fraction)
    (folder / "pictures" / "train").mkdir(parents=True, exist_ok=True)
    (folder / "pictures" / "test").mkdir(parents=True, exist_ok=True)
    names = [f"pictures/train/{r:05d}.png" for r in rows]
    test_names = [f"pictures/test/{i:05d}.png" for i in range(len(y_test))]
    _write_pngs(x, [folder / n for n in names])
    _write_pngs(x_test, [folder / n for n in test_names])
    classes = np.asarray(CLASSES, dtype=object)
    train = pd.DataFrame({IMAGE: names, LABEL: pd.Series(np.where(gold, classes[y], None), dtype=object)})
    for name, accuracy, abstain in ANNOTATORS:
        votes = annotate(y, accuracy, abstain, rng)
        votes[unseen] = -1
        train[name] = pd.Series(np.where(votes >= 0, classes[np.maximum(votes, 0)], None), dtype=object)
    train[ROW_ID] = rows
    test = pd.DataFrame({IMAGE: test_names, LABEL: classes[y_test]})
    truth = pd.DataFrame({ROW_ID: rows, "true_label": classes[y]})
    for frame, path in ((truth, folder / "truth.parquet"), (test, spec.test_path), (train, spec.train_path)):
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        frame.to_parquet(partial, index=False)
        os.replace(partial, path)
    return spec
