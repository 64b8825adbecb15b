"""Monitoring and the review report for pictures: the ImageNet-C corruptions of the suite, the drift
reference and the drift check on picture descriptors and the model's embedding (real Evidently, a real
SQLite prediction log written as the server writes it), the contamination check by picture hash, and the
report's contact sheet of suspect pictures. Tiny pictures made with Pillow; no training."""

from __future__ import annotations

import hashlib
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from weakflow.deploy.prediction_log import PredictionLog
from weakflow.monitoring.drift import EMBEDDING_AUC, DriftRule, decide, drift_report, embedding_threshold, load_window
from weakflow.monitoring.reference import embedding_columns, picture_embedding, reference_sample
from weakflow.tasks.core.images import ImageFeaturizer, ImageFormat
from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.picture_stats import DESCRIPTORS, picture_descriptors, picture_record
from weakflow.tasks.core.robustness import PICTURE_CORRUPTIONS, corrupt, corrupt_pictures, corruptions_for, robustness_table
from weakflow.tasks.core.schema import InputSchema
from weakflow.tasks.lib.config import FilesData, ReportConfig
from weakflow.tasks.lib.data import FOLD, PROVENANCE, ROW_ID, SPLIT, PipelineData

SIDE = 16  # pictures are decoded to 16 x 16


def _pictures(n: int, channels: int, seed: int, bright: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, C, SIDE, SIDE): class 0 dark with horizontal stripes, class 1 light with vertical ones."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    base = np.where(y == 1, 150.0, 60.0)[:, None, None, None] + bright
    stripes = np.zeros((n, 1, SIDE, SIDE))
    stripes[y == 0, :, ::4, :] = 40.0
    stripes[y == 1, :, :, ::4] = 40.0
    tint = rng.uniform(-20, 20, (n, channels, 1, 1))
    x = base + stripes + tint + rng.normal(0, 8, (n, channels, SIDE, SIDE))
    return np.clip(x, 0, 255).round().astype(np.uint8), y


def _write(folder: Path, pixels: np.ndarray, size: tuple[int, int] | None = None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, p in enumerate(pixels):
        img = Image.fromarray(p[0], "L") if p.shape[0] == 1 else Image.fromarray(p.transpose(1, 2, 0), "RGB")
        if size is not None:
            img = img.resize(size)
        img.save(folder / f"{i:04d}.png")
        names.append(f"{folder.name}/{i:04d}.png")
    return names


def _brightness_classifier(at: int):
    """Class 1 when the picture (the features from ``at`` on) is light: a fixed, decent classifier."""
    return lambda x: (np.asarray(x)[:, at:].mean(axis=1) > 135).astype(int)


# --- the corruption suite --------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", PICTURE_CORRUPTIONS)
def test_picture_corruption_is_deterministic_nested_and_leaves_side_features(kind, channels):
    pixels, _ = _pictures(12, channels, seed=1)
    side = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    x = np.hstack([side, pixels.reshape(12, -1).astype(np.float32)])
    before = x.copy()
    out = corrupt(x, kind, 0.5, seed=3, picture_shape=pixels.shape[1:])
    assert out.shape == x.shape and out.dtype == np.float32 and np.array_equal(x, before)
    assert np.array_equal(out[:, :3], side)  # numbers beside the picture are not pictures
    assert not np.array_equal(out[:, 3:], x[:, 3:])
    assert ((out[:, 3:] >= 0) & (out[:, 3:] <= 255) & (out[:, 3:] == np.round(out[:, 3:]))).all()  # still uint8 values
    assert np.array_equal(out, corrupt(x, kind, 0.5, seed=3, picture_shape=pixels.shape[1:]))
    np.testing.assert_array_equal(corrupt(x, kind, 0.0, picture_shape=pixels.shape[1:]), x)
    # a stronger level moves the pictures further from the clean ones
    far = [np.abs(corrupt_pictures(pixels, kind, s, seed=3).astype(float) - pixels).mean() for s in (0.25, 0.5, 1.0)]
    assert far[0] < far[1] < far[2], far


def test_picture_corruptions_do_what_imagenet_c_does():
    grey = np.full((40, 1, SIDE, SIDE), 128, np.uint8)
    noisy = corrupt_pictures(grey, "pixel_noise", 0.5, seed=0).astype(float) - 128
    assert noisy.std() == pytest.approx(0.38 * 0.5 * 255, rel=0.05)
    pixels, _ = _pictures(40, 3, seed=2)
    d0 = [picture_descriptors(p) for p in pixels]
    value = pixels.max(axis=1).astype(float) / 255  # HSV value: ImageNet-C's brightness raises it
    raised = corrupt_pictures(pixels, "brightness", 0.5).max(axis=1).astype(float) / 255
    assert (raised - value).mean() == pytest.approx(0.25, abs=0.01)
    grey_pictures, _ = _pictures(40, 1, seed=2)
    lighter = corrupt_pictures(grey_pictures, "brightness", 0.5).astype(float) - grey_pictures
    assert lighter.mean() / 255 == pytest.approx(0.25, abs=0.01)
    flat = [picture_descriptors(p) for p in corrupt_pictures(pixels, "contrast", 1.0)]
    assert np.mean([b["contrast"] / a["contrast"] for a, b in zip(d0, flat)]) == pytest.approx(0.05, abs=0.02)
    blurred = [picture_descriptors(p) for p in corrupt_pictures(pixels, "gaussian_blur", 1.0)]
    assert all(b["sharpness"] < 0.5 * a["sharpness"] for a, b in zip(d0, blurred))
    # JPEG at quality 7: blocks and ringing the clean picture does not have; what Pillow decodes back
    jpeg = corrupt_pictures(pixels, "jpeg_compression", 1.0)
    buf = io.BytesIO()
    Image.fromarray(pixels[0].transpose(1, 2, 0)).save(buf, format="JPEG", quality=7)
    assert np.array_equal(jpeg[0], np.asarray(Image.open(buf)).transpose(2, 0, 1))


def test_suite_for_pictures_and_its_accuracy_drop():
    pixels, y = _pictures(200, 1, seed=4)
    x = np.hstack([np.ones((200, 2), np.float32), pixels.reshape(200, -1).astype(np.float32)])
    assert corruptions_for(None, (1, SIDE, SIDE)) == PICTURE_CORRUPTIONS
    assert "pixel_noise" not in corruptions_for((1, 8, 8))  # pixel columns (digits) keep their suite
    with pytest.raises(ValueError, match="'gaussian_blur' needs pictures"):
        corrupt(x, "gaussian_blur", 0.5)
    with pytest.raises(ValueError, match=r"picture shape \(3, 16, 16\) has 768 values, but the rows have 258"):
        corrupt(x, "contrast", 0.5, picture_shape=(3, SIDE, SIDE))
    predict = _brightness_classifier(2)
    rows = robustness_table({"challenger": predict, "champion": predict}, x, y, PICTURE_CORRUPTIONS, [0.5, 1.0],
                            seed=0, picture_shape=(1, SIDE, SIDE))
    table = pd.DataFrame(rows)
    assert len(table) == 2 * len(PICTURE_CORRUPTIONS) * 2
    assert list(table["model"][: len(PICTURE_CORRUPTIONS) * 2]) == ["challenger"] * len(PICTURE_CORRUPTIONS) * 2
    assert (table["clean_accuracy"] == 1.0).all()
    np.testing.assert_allclose(table["drop"], table["clean_accuracy"] - table["accuracy"])
    drop = table[table["model"] == "challenger"].set_index(["corruption", "severity"])["drop"]
    assert drop[("brightness", 1.0)] > 0.4  # every dark picture turns light
    assert drop[("brightness", 0.5)] <= drop[("brightness", 1.0)]
    assert drop[("gaussian_blur", 1.0)] == 0.0  # blur keeps the mean this classifier reads


# --- drift: reference, prediction log, Evidently ---------------------------------------------------


def _data(tmp_path: Path, n: int = 120, channels: int = 1) -> PipelineData:
    """A picture PipelineData (one numeric side feature) whose files are 20 x 24 PNGs decoded to 16 x 16."""
    pixels, y = _pictures(n, channels, seed=5)
    names = _write(tmp_path / "train", pixels, size=(20, 24))
    test_names = _write(tmp_path / "test", pixels[:20], size=(20, 24))
    train = pd.DataFrame({"image": names, "area": np.linspace(0, 1, n), "label": y.astype(int),
                          "weak_label": y.astype(int), PROVENANCE: "weak", SPLIT: "weak", FOLD: -1,
                          ROW_ID: np.arange(n)})
    test = pd.DataFrame({"image": test_names, "area": np.linspace(0, 1, 20), "label": y[:20].astype(int)})
    spec = FilesData(train_path=tmp_path / "train.csv", test_path=tmp_path / "test.csv", feature_columns=["area"],
                     image_columns=["image"], image_root=tmp_path, weak_label_columns=["weak_label"])
    images = ImageFeaturizer("image", ImageFormat(SIDE, channels), root=tmp_path)
    return PipelineData(train, test, spec, [0, 1], schema=InputSchema(["area"], [], None, images))


def _network(data: PipelineData) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec("resnet", len(data.features), 2, hidden=(16,), dropout=0.0, image_shape=data.schema.image_shape)
    model = build_model(spec)
    model.scale.fit(data.x(data.train), spec.image_shape)
    return model.eval()


def test_picture_reference_holds_descriptors_and_embedding_not_pixels(tmp_path):
    data = _data(tmp_path)
    model = _network(data)
    ref = reference_sample(data, model, size=50, seed=0, device="cpu")
    emb = embedding_columns(list(ref.columns))
    assert emb == [f"image:embedding_{i}" for i in range(16)]  # the network's last stage width
    assert list(ref.columns) == ["area", *(f"image:{d}" for d in DESCRIPTORS), *emb, PROVENANCE, "prediction",
                                 "confidence"]
    assert not any(":c0_" in c for c in ref.columns)  # no pixel columns
    assert (ref["image:width"] == 20).all() and (ref["image:height"] == 24).all()  # the file's own size
    rows = data.train.sample(n=50, random_state=0)
    first = picture_descriptors(data.schema.images.pixels(rows.iloc[:1])[0])
    assert ref["image:brightness"].iloc[0] == pytest.approx(first["brightness"])
    assert ref["image:sharpness"].iloc[0] == pytest.approx(first["sharpness"])
    np.testing.assert_allclose(ref[emb].to_numpy(), picture_embedding(model, data.x(rows)), rtol=1e-5, atol=1e-6)
    assert picture_embedding(torch.nn.Linear(3, 2), np.zeros((2, 3), np.float32)) is None  # no picture network


def test_embedding_threshold_rises_with_small_windows():
    assert embedding_threshold(100_000, 100_000) == EMBEDDING_AUC  # large samples: Evidently's own threshold
    small, large = embedding_threshold(1000, 100), embedding_threshold(1000, 500)
    assert small > large > EMBEDDING_AUC
    assert small == pytest.approx(0.5 + 3.0902 * np.sqrt(551 / (12 * 500 * 50)), abs=1e-3)  # Mann-Whitney, alpha 0.001


def _log_window(url: str, data: PipelineData, model: torch.nn.Module, pixels: np.ndarray, version: str,
                with_embedding: bool = True) -> None:
    """Write pictures into the prediction log as the server does (hash, bytes, descriptors), plus the
    model's embedding of each where the server logs it."""
    from weakflow.tasks.core.images import decode
    from weakflow.tasks.core.picture_stats import logged_names

    sent = []
    for p in pixels:  # the PNG a client sends, and what the server decodes it to
        buf = io.BytesIO()
        Image.fromarray(p[0], "L").resize((20, 24)).save(buf, format="PNG")
        sent.append(buf.getvalue())
    decoded = np.stack([decode(b, data.schema.images.fmt) for b in sent])
    area = np.random.default_rng(len(pixels)).uniform(0, 1, len(pixels))
    x = np.hstack([area[:, None].astype(np.float32), decoded.reshape(len(pixels), -1).astype(np.float32)])
    emb = picture_embedding(model, x)
    with torch.inference_mode():
        predicted = [str(c) for c in model(torch.from_numpy(x)).argmax(1).tolist()]
    names = [f"image:embedding_{i}" for i in range(emb.shape[1])]
    rows, fields = [], ["area", *logged_names("image")] + (names if with_embedding else [])
    for i, (b, p) in enumerate(zip(sent, decoded)):
        row = {"area": float(area[i]), **picture_record("image", b, p, 20, 24)}
        rows.append(row | dict(zip(names, map(float, emb[i]))))
    log = PredictionLog(url)
    for start in range(0, len(rows), 50):
        part = rows[start:start + 50]
        log.put(f"req-{version}-{start}", "pics", version, fields, part, predicted[start:start + 50], [0.9] * len(part))
    log.close()


def test_drift_on_picture_descriptors_and_embedding_from_the_prediction_log(tmp_path):
    data = _data(tmp_path, n=300)
    model = _network(data)
    ref = reference_sample(data, model, size=300, seed=0, device="cpu")
    emb = embedding_columns(list(ref.columns))
    features = [c for c in ref.columns if c not in (PROVENANCE, "prediction", "confidence", *emb)]
    url = f"sqlite:///{tmp_path / 'log.db'}"
    same, _ = _pictures(200, 1, seed=9)
    brighter, _ = _pictures(200, 1, seed=9, bright=70.0)
    _log_window(url, data, model, same, "1")
    _log_window(url, data, model, brighter, "2")
    _log_window(url, data, model, brighter, "3", with_embedding=False)
    rule = DriftRule(drift_share=0.3, min_rows=100)

    window = load_window(url, features, rows=None, model_version="1", optional=emb)
    assert len(window) == 200 and set(emb) <= set(window.columns)
    assert window["image:sha256"].str.len().eq(64).all()  # the hash rides along (contamination check)
    calm = drift_report(ref, window, features, embeddings=emb)
    assert calm.embedding_threshold == pytest.approx(embedding_threshold(len(ref), 200))
    assert calm.embedding_score is not None and calm.embedding_score <= calm.embedding_threshold
    assert not calm.embedding_drifted and "image:brightness" not in calm.drifted_columns
    assert decide(calm, rule).drift is False

    shifted = drift_report(ref, load_window(url, features, rows=None, model_version="2", optional=emb), features,
                           embeddings=emb)
    assert "image:brightness" in shifted.drifted_columns
    assert shifted.embedding_drifted and shifted.embedding_score > shifted.embedding_threshold
    verdict = decide(shifted, rule)
    assert verdict.drift and any("embedding drifted" in r for r in verdict.reasons)
    assert shifted.summary()["embedding_drifted"] is True

    bare = load_window(url, features, rows=None, model_version="3", optional=emb)
    assert not set(emb) & set(bare.columns)  # a log without the embedding: the rest is still checked
    result = drift_report(ref, bare, features, embeddings=emb)
    assert result.embedding_score is None and "server logs no embedding" in result.embedding_note
    assert "image:brightness" in result.drifted_columns and decide(result, rule).drift


def test_served_picture_equal_to_a_test_file_is_contamination(tmp_path):
    from weakflow.tasks.monitor import picture_contamination

    data = _data(tmp_path, n=30)
    data.train[["image", "area", "label"]].to_csv(data.spec.train_path, index=False)
    data.test[["image", "area", "label"]].to_csv(data.spec.test_path, index=False)
    test_file = (tmp_path / data.test["image"].iloc[3]).read_bytes()
    window = pd.DataFrame({"image:sha256": [hashlib.sha256(test_file).hexdigest(), "0" * 64],
                           "request_id": ["a", "b"], "row_index": [0, 0]})
    found = picture_contamination(data.spec, window)
    assert list(found["evaluation_contamination"]["reference_index"]) == [3]
    assert list(found["evaluation_contamination"]["request_id"]) == ["a"]
    # the test files were written from the first 20 training pictures: byte for byte the same files
    assert list(found["memorisation_exposure"]["reference_index"]) == [3]  # same bytes: the same picture file


# --- the report: corruptions and the contact sheet -------------------------------------------------


def test_contact_sheet_shows_each_picture_with_its_labels():
    from weakflow.tasks.report.render import contact_sheet

    pixels = np.zeros((3, 3, 8, 8), np.uint8)
    pixels[1, 0] = 255  # the second picture: pure red
    sheet = Image.open(io.BytesIO(contact_sheet(pixels, [("a", "given: x", "model: y")] * 3, cols=2, tile=32)))
    a = np.asarray(sheet.convert("RGB"))
    assert sheet.size == (2 * (32 + 8), 2 * (32 + 6 + 3 * 12 + 6))
    red = (a[..., 0] == 255) & (a[..., 1] == 0) & (a[..., 2] == 0)
    ys, xs = np.nonzero(red)
    assert red.sum() == 32 * 32 and xs.min() >= 40 and ys.max() < 40  # one 32 px tile, second column, first row
    below = a[40:40 + 3 * 12, 44:76]
    assert (below < 128).any()  # caption text drawn under the tile
    with pytest.raises(ValueError, match="3 pictures but 2 captions"):
        contact_sheet(pixels, [("a",)] * 2)


def test_review_of_a_picture_model_has_picture_corruptions_and_the_contact_sheet(tmp_path):
    from weakflow.tasks.lib.results import WeakLabels
    from weakflow.tasks.lib.review import Champion
    from weakflow.tasks.lib.steps import RunContext
    from weakflow.tasks.report.build import build_review, review_metrics
    from weakflow.tasks.report.render import CORRUPTIONS_ALT, SHEET_ALT, render_html, render_markdown
    from weakflow.tasks.core.training import predict_proba

    data = _data(tmp_path, n=60)
    model = _network(data)
    probs = predict_proba(model, data.x(data.test), device="cpu")
    weak = data.train[ROW_ID].to_numpy()
    labels = WeakLabels(weak, 1 - data.train["label"].to_numpy(), None, pd.DataFrame())  # every weak label wrong
    rc = ReportConfig(bootstrap_samples=100, severities=[0.5, 1.0], top_k=6)
    review = build_review(data, rc, RunContext(0, "cpu", tmp_path), model, {"final": probs, "gold_only": probs},
                          Champion(None), labels)
    assert list(dict.fromkeys(review.robustness["corruption"])) == list(PICTURE_CORRUPTIONS)
    assert "ImageNet-C" in review.robustness_note
    assert {f"robustness_drop/{k}" for k in PICTURE_CORRUPTIONS} <= set(review_metrics(review))
    assert len(review.issues) and "image" in review.issues.columns
    assert review.issues["image"].iloc[0] == data.train.set_index(ROW_ID).loc[review.issues[ROW_ID].iloc[0], "image"]
    sheet = {f.name: f for f in review.figures}["label_issues.png"]
    assert sheet.alt == SHEET_ALT
    shown = min(6, len(review.issues))
    assert Image.open(io.BytesIO(sheet.png)).size[0] == min(8, shown) * (96 + 8)  # 16 px tiles enlarged 6x
    assert len(review.thumbnails) == shown
    page = render_html(review)
    assert "drop per picture corruption" in page and page.count('class="tile"') == shown
    assert f'<img alt="{html.escape(SHEET_ALT)}"' in page  # the sheet is in the page, not only beside it
    examples = Image.open(io.BytesIO({f.name: f for f in review.figures}["corruptions.png"].png))
    assert examples.size == (3 * (96 + 8), len(PICTURE_CORRUPTIONS) * (96 + 6 + 2 * 12 + 6))  # clean + 2 levels
    assert f'<img alt="{html.escape(CORRUPTIONS_ALT)}"' in page
    md = render_markdown(review)
    assert "![" + SHEET_ALT + "](label_issues.png)" in md and "jpeg_compression" in md
