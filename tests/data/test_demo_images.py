"""The picture demo (tasks/lib/demo_images.py): shipped Fashion-MNIST checked, written as PNG files, annotated by
three unequal annotators who confuse look-alike classes, a small gold set per class, read back as user files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from weakflow.tasks.lib.config import DemoImagesData
from weakflow.tasks.lib.demo_images import ANNOTATORS, CLASSES, LOOK_ALIKE, annotate, materialize_demo_images, read_fashion


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("demo")
    return materialize_demo_images(DemoImagesData(train_size=1000), root), root


def test_the_shipped_pictures_are_read_and_checked() -> None:
    x, y = read_fashion("test")
    assert x.shape == (2000, 28, 28) and x.dtype == np.uint8
    assert sorted(np.unique(y).tolist()) == list(range(10))


def test_demo_files_are_pictures_on_disk_with_gold_weak_and_unseen_rows(demo) -> None:
    spec, _ = demo
    train, test = pd.read_parquet(spec.train_path), pd.read_parquet(spec.test_path)
    assert len(train) == 1000 and len(test) == 2000
    first = Image.open(spec.image_root / train["image"].iloc[0])
    assert first.size == (28, 28) and first.format == "PNG"
    gold = train["label"].notna()
    assert gold.groupby(train["label"]).sum().min() >= 6 and 0.04 < gold.mean() < 0.1
    votes = train[spec.weak_label_columns]
    unseen = votes.isna().all(axis=1) & ~gold
    assert 0.2 < unseen.mean() < 0.4  # about 30% of the non-gold pictures seen by no annotator
    assert set(spec.classes) == set(CLASSES) and set(test["label"]) == set(CLASSES)


def test_annotators_are_unequal_and_confuse_look_alikes(demo) -> None:
    spec, _ = demo
    train = pd.read_parquet(spec.train_path)
    truth = pd.read_parquet(spec.train_path.parent / "truth.parquet").set_index("row_id")["true_label"]
    true = truth.loc[train["row_id"]].to_numpy()
    accuracies = []
    for name, _, _ in ANNOTATORS:
        voted = train[name].notna().to_numpy()
        accuracies.append((train[name].to_numpy()[voted] == true[voted]).mean())
    assert accuracies[0] > accuracies[1] > accuracies[2]


def test_mistakes_stay_among_look_alikes() -> None:
    rng = np.random.default_rng(0)
    y = np.full(5000, 6)  # shirts
    votes = annotate(y, accuracy=0.5, abstain=0.0, rng=rng)
    wrong = votes[votes != 6]
    assert np.isin(wrong, LOOK_ALIKE[0]).mean() > 0.8
    assert (annotate(y, 1.0, 0.5, np.random.default_rng(1)) == -1).mean() == pytest.approx(0.5, abs=0.03)


def test_a_second_call_reuses_the_files(demo) -> None:
    spec, root = demo
    stamp = spec.train_path.stat().st_mtime_ns
    again = materialize_demo_images(DemoImagesData(train_size=1000), root)
    assert again == spec and spec.train_path.stat().st_mtime_ns == stamp


def test_demo_validates_and_reads_as_pictures(demo, tmp_path: Path) -> None:
    from weakflow.tasks.lib.config import parse_config
    from weakflow.tasks.validate import InputChecks, check_data

    spec, _ = demo
    cfg = parse_config({"data": spec.model_dump(), "tracking": {"workspace": str(tmp_path)}})
    data, report = check_data(spec, cfg.validation, InputChecks.of(cfg))
    assert report.success
    assert data.schema.image_shape == (1, 28, 28) and "grey" in data.schema.images.chosen
    assert data.x(data.test).shape == (2000, 784)
