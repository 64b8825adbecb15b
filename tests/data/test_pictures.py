"""Picture files in the validation suite (every file opened: exists, decodes, size, format, mode; a failure
names split, column, row and file) and picture contamination between test and training (exact copies by
pixels, near copies by perceptual hash) under the governance policies."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from weakflow.data_checks.contamination import PICTURE_NEAR_BITS, near_picture_pairs, picture_keys
from weakflow.data_checks.pictures import check_pictures
from weakflow.data_checks.suite import DataValidationError, run_suite
from weakflow.tasks.core.images import ImageFormat, decode
from weakflow.tasks.governance import check_training
from weakflow.tasks.lib.checks import GovernanceError
from weakflow.tasks.lib.config import FilesData, GovernanceConfig, ValidationConfig
from weakflow.tasks.lib.data import assemble, read_raw
from weakflow.tasks.validate import InputChecks, check_data


def textured(seed: int, side: int = 24) -> np.ndarray:
    """A grey picture with detail at every scale the perceptual hash reads (a random 16x16 pattern resized):
    distinct seeds look different to it, as photos do, while a resized or re-encoded copy looks the same.
    (A picture with almost no detail, such as a 4x4 pattern blown up, leaves most hash bits to noise.)"""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8))
    return np.asarray(small.resize((side, side), Image.Resampling.BICUBIC))


def save(path: Path, pixels: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels)
    (img.convert(mode) if mode else img).save(path, fmt)
    return path


def write_tables(root: Path, train_files: list[str], test_files: list[str], **spec) -> FilesData:
    """CSV train/test files with a picture column (paths relative to ``root``) and gold labels 0/1."""
    pd.DataFrame({"image": train_files, "label": [i % 2 for i in range(len(train_files))]}).to_csv(
        root / "train.csv", index=False)
    pd.DataFrame({"image": test_files, "label": [i % 2 for i in range(len(test_files))]}).to_csv(
        root / "test.csv", index=False)
    return FilesData(train_path=root / "train.csv", test_path=root / "test.csv", image_columns=["image"],
                     image_root=root, label_column="label", **spec)


def clean_set(root: Path, n_train: int = 12, n_test: int = 6, side: int = 8) -> tuple[list[str], list[str]]:
    train = [save(root / "train" / f"t{i}.png", textured(i, side)).relative_to(root).as_posix() for i in range(n_train)]
    test = [save(root / "test" / f"s{i}.png", textured(1000 + i, side)).relative_to(root).as_posix()
            for i in range(n_test)]
    return train, test


# --- the validation suite ------------------------------------------------------------------------------


def test_pictures_in_every_accepted_mode_and_format_pass_with_data_docs(tmp_path):
    """Grey, palette, 1-bit, alpha, 16-bit, float, CMYK (JPEG and TIFF), WebP and BMP pictures pass, and the
    decoder the model uses reads every one of them (so the accepted modes are modes it can turn into pixels)."""
    grey = textured(3, 16)
    rgb = np.stack([grey, textured(4, 16), textured(5, 16)], axis=-1)
    made = {  # file -> (how it is written, the mode Pillow must read back)
        "grey.png": (lambda p: save(p, grey), "L"),
        "rgb.png": (lambda p: save(p, rgb), "RGB"),
        "rgba.png": (lambda p: save(p, rgb, "RGBA"), "RGBA"),
        "la.png": (lambda p: save(p, grey, "LA"), "LA"),
        "palette.png": (lambda p: save(p, rgb, "P"), "P"),
        "bits.png": (lambda p: save(p, grey, "1"), "1"),
        "deep.png": (lambda p: Image.fromarray(grey.astype(np.uint16) * 257).save(p), "I;16"),
        "float.tif": (lambda p: Image.fromarray(grey.astype(np.float32) / 255).save(p), "F"),
        "cmyk.jpg": (lambda p: save(p, rgb, "CMYK", "JPEG"), "CMYK"),
        "cmyk.tif": (lambda p: save(p, rgb, "CMYK", "TIFF"), "CMYK"),
        "ycbcr.tif": (lambda p: save(p, rgb, "YCbCr", "TIFF"), "YCbCr"),
        "int32.tif": (lambda p: save(p, grey, "I", "TIFF"), "I"),
        "rgb.webp": (lambda p: save(p, rgb, None, "WEBP"), "RGB"),
        "rgb.bmp": (lambda p: save(p, rgb, None, "BMP"), "RGB"),
    }
    names = []
    for name, (write, mode) in made.items():
        write(tmp_path / name)
        with Image.open(tmp_path / name) as img:
            assert img.mode == mode, name
        assert decode(tmp_path / name, ImageFormat(12, 3)).shape == (3, 12, 12)
        names.append(name)
    test = [save(tmp_path / f"test{i}.png", textured(50 + i, 16)).name for i in range(4)]
    raw = read_raw(write_tables(tmp_path, names, test))
    report = run_suite(raw, [0, 1], 2, tmp_path / "docs")
    assert report.success, report.summary()
    assert {"train_pictures", "test_pictures"} <= set(report.result)  # in the GX result beside the other tables
    docs = "".join(p.read_text(errors="ignore") for p in (tmp_path / "docs").rglob("*.html"))
    assert "train_pictures" in docs and "test_pictures" in docs


def test_broken_pictures_fail_the_suite_naming_split_column_row_and_file(tmp_path):
    """A truncated PNG, a text file named .png, a missing file and a picture over data.image_max_pixels: the
    suite fails, one line per split names each bad row and file and why, and nothing is decoded for training."""
    train, test = clean_set(tmp_path, side=8)  # 64 pixels each
    whole = (tmp_path / train[2]).read_bytes()
    (tmp_path / "train" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "train" / "notes.png").write_text("not a picture\n")
    save(tmp_path / "test" / "big.png", textured(7, 16))  # 256 pixels > 100
    train[2], train[5], train[7] = "train/cut.png", "train/notes.png", "train/gone.png"
    test[1] = "test/big.png"
    spec = write_tables(tmp_path, train, test, image_max_pixels=100)
    report = run_suite(read_raw(spec), [0, 1], 2)
    assert not report.success
    lines = {f.table: str(f) for f in report.failures}
    assert set(lines) == {"train", "test"}, report.summary()
    t = lines["train"]
    assert t.startswith("train.image: expected every picture file in column 'image'")
    assert "3 of 12 picture(s) unusable" in t
    assert f"row 2: {tmp_path / 'train' / 'cut.png'} does not decode" in t
    assert f"row 5: {tmp_path / 'train' / 'notes.png'} is not a picture" in t
    assert f"row 7: {tmp_path / 'train' / 'gone.png'} does not exist" in t
    assert lines["test"].startswith("test.image:")
    assert f"row 1: {tmp_path / 'test' / 'big.png'} is 16x16 = 256 pixels; at most 100" in lines["test"]
    # through the stage's entry point: the suite stops the run before any picture is decoded for training
    cache = tmp_path / "cache"
    with pytest.raises(DataValidationError, match=r"train\.image: .*row 5: .*notes\.png is not a picture"):
        check_data(spec, ValidationConfig(), InputChecks(False, 1000, 2, True, "auto", cache_dir=cache))
    assert not cache.exists()


def test_empty_cells_wrong_formats_and_modes_are_named(tmp_path):
    """An empty cell, a GIF (Pillow reads it, the decoder does not accept it) and a picture in a mode the
    decoder cannot turn into grey or RGB faithfully (CIE LAB) are problems of their rows."""
    train, test = clean_set(tmp_path)
    Image.fromarray(textured(9, 8)).save(tmp_path / "train" / "anim.gif")
    save(tmp_path / "train" / "lab.tif", np.stack([textured(9, 8)] * 3, axis=-1), "LAB", "TIFF")
    frame = pd.DataFrame({"image": [train[0], None, "train/anim.gif", "train/lab.tif"]})
    (check,) = check_pictures({"train": frame}, "image", tmp_path, 1000)
    assert check.table["picture_ok"].tolist() == [True, False, False, False]
    assert check.table.loc[3, "problem"].startswith(f"row 3: {tmp_path / 'train' / 'lab.tif'} has Pillow mode LAB; "
                                                    "expected one of 1, L, LA, P")
    assert check.table.loc[1, "problem"] == "row 1: empty cell; expected a picture file path"
    assert check.table.loc[2, "problem"].startswith(f"row 2: {tmp_path / 'train' / 'anim.gif'} is not a picture")


# --- contamination ---------------------------------------------------------------------------------------


def near_copy(pixels: np.ndarray) -> Image.Image:
    """The picture twice as large, in colour, re-encoded as JPEG: other bytes and pixels, the same picture."""
    img = Image.fromarray(pixels).resize((pixels.shape[1] * 2, pixels.shape[0] * 2), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    img.convert("RGB").save(buffer, "JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue()))


def contaminated(root: Path) -> FilesData:
    """40 training and 10 test pictures; test picture 3 copied as training row 11 under another name and
    test picture 6 resized, recoloured and re-encoded as training row 20 (a JPEG)."""
    train, test = clean_set(root, n_train=40, n_test=10, side=24)
    shutil.copy(root / test[3], root / "train" / "copied.png")
    near_copy(textured(1006, 24)).save(root / "train" / "resaved.jpg")
    train[11], train[20] = "train/copied.png", "train/resaved.jpg"
    return write_tables(root, train, test)


def test_copied_and_near_copied_test_pictures_are_found_by_governance(tmp_path):
    spec = contaminated(tmp_path)
    raw = read_raw(spec)
    data = assemble(raw, [0, 1], folds=2, cache_dir=tmp_path / "cache")
    with pytest.raises(GovernanceError) as failed:  # the default: exact copies fail the run
        check_training(data, GovernanceConfig(), seed=0)
    message = str(failed.value)
    assert (f"exact_duplicates: 1 training row(s) whose picture equals a test picture (same pixels); e.g. training "
            f"row 11 ({tmp_path / 'train' / 'copied.png'}) = test row 3 ({tmp_path / 'test' / 's3.png'})") in message
    findings = failed.value.findings
    near = findings.tables["near_duplicates"]
    assert near["test_index"].tolist() == [6] and near["row_id"].tolist() == [20]
    assert 0 < near["distance"].iloc[0] <= PICTURE_NEAR_BITS
    # drop: both copies go, nothing else
    kept, found = check_training(data, GovernanceConfig(exact_duplicates="drop", near_duplicates="drop"), seed=0)
    assert len(kept.train) == 38 and not kept.train["row_id"].isin([11, 20]).any()
    assert found.actions == {"exact_duplicates": "dropped 1 row(s)", "near_duplicates": "dropped 1 row(s)",
                             "label_leakage": "none"}
    # fail on near copies: the message names the near copy's file and row
    with pytest.raises(GovernanceError, match=r"near_duplicates: 1 training row\(s\) whose picture is a near copy "
                                              r".* training row 20 \(.*resaved\.jpg\) ~ test row 6 \(.*s6\.png\)"):
        check_training(data, GovernanceConfig(exact_duplicates="warn", near_duplicates="fail"), seed=0)


def test_the_validation_suite_fails_on_a_test_picture_copied_into_training(tmp_path):
    """The copy under another name has other paths but the same bytes: the suite's copy check sees it."""
    report = run_suite(read_raw(contaminated(tmp_path)), [0, 1], 2, test_copies=True)
    lines = [str(f) for f in report.failures]
    assert len(lines) == 1 and lines[0].startswith("test_rows_in_training.training_copies: expected no test row "
                                                   "whose features and picture file equal a training row's")
    assert "at test row [3]" in lines[0]


def test_clean_pictures_have_no_copies_and_a_relabelled_copy_is_exact(tmp_path):
    train, test = clean_set(tmp_path, n_train=40, n_test=10, side=24)
    ref = picture_keys([tmp_path / p for p in test])
    rows = picture_keys([tmp_path / p for p in train])
    assert near_picture_pairs(ref, rows).empty and not np.isin(rows.exact, ref.exact).any()
    # the same pixels saved again as a lossless file of another format: an exact copy, not a near one
    save(tmp_path / "again.bmp", textured(1002, 24), None, "BMP")
    again = picture_keys([tmp_path / "again.bmp"])
    assert again.exact[0] == ref.exact[2] and near_picture_pairs(ref, again).empty


def test_a_named_pipe_in_the_picture_column_fails_the_suite_instead_of_hanging_it(tmp_path):
    """A FIFO named as a picture: opening it would wait for a writer for ever; the suite names the row instead."""
    from tests.conftest import fifo_call

    train, test = clean_set(tmp_path, side=8)
    train[3] = "train/pipe.png"
    spec = write_tables(tmp_path, train, test)
    report = fifo_call(tmp_path / "train" / "pipe.png", lambda: run_suite(read_raw(spec), [0, 1], 2))
    assert not report.success
    lines = {f.table: str(f) for f in report.failures}
    assert f"row 3: {tmp_path / 'train' / 'pipe.png'} is not a regular file" in lines["train"]
