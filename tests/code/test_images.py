"""Picture decoding, the format chosen from the data, the decoded cache and the picture featurizer
(tasks/core/images.py), on real files written with Pillow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from weakflow.tasks.core.picture_rows import PictureRows
from weakflow.tasks.core.images import (ImageFeaturizer, ImageFormat, ImageProblem, PixelCache, choose_format,
                                        WIDE_MODES, decode, fit_featurizer, look)


def picture(path: Path, size: tuple[int, int] = (20, 12), mode: str = "RGB", fmt: str | None = None,
            colour: tuple = (200, 30, 30)) -> Path:
    img = Image.new(mode, size, colour if mode in ("RGB", "RGBA", "CMYK") else 128)
    img.save(path, format=fmt)
    return path


@pytest.mark.parametrize("suffix,fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP"),
                                        (".tiff", "TIFF")])
def test_every_format_decodes_to_the_square_size(tmp_path: Path, suffix: str, fmt: str) -> None:
    path = picture(tmp_path / f"a{suffix}", fmt=fmt)
    out = decode(path, ImageFormat(16, 3))
    assert out.shape == (3, 16, 16) and out.dtype == np.uint8
    assert out[0].mean() > 150 and out[1].mean() < 80  # red stays red (channel order kept)
    assert decode(path, ImageFormat(8, 1)).shape == (1, 8, 8)


def test_sixteen_bit_and_transparent_pictures_become_eight_bit(tmp_path: Path) -> None:
    deep = Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16))
    deep.save(tmp_path / "deep.png")
    assert decode(tmp_path / "deep.png", ImageFormat(10, 1)).min() == 255
    clear = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent: laid on white
    clear.save(tmp_path / "clear.png")
    assert decode(tmp_path / "clear.png", ImageFormat(10, 3)).min() == 255


def test_bad_pictures_raise_one_problem_each(tmp_path: Path) -> None:
    (tmp_path / "text.png").write_text("not a picture")
    picture(tmp_path / "good.png")
    noisy = tmp_path / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(noisy)
    (tmp_path / "cut.png").write_bytes(noisy.read_bytes()[:2000])  # the header reads; the pixels end early
    for name, expected, limit in (("text.png", "not a picture", 10**6), ("cut.png", "does not decode", 10**6),
                                  ("missing.png", "does not exist", 10**6), ("good.png", "at most 100 ", 100)):
        with pytest.raises(ImageProblem, match=expected):
            decode(tmp_path / name, ImageFormat(8, 1, max_pixels=limit))
    with pytest.raises(ImageProblem, match="folder"):
        decode(tmp_path, ImageFormat(8, 1))


def test_a_named_pipe_or_a_device_is_refused_as_a_picture_before_any_read(tmp_path: Path) -> None:
    """A table may name a FIFO (reading one waits for a writer for ever) or a device (``/dev/zero`` never ends)."""
    from tests.conftest import fifo_call

    problem = fifo_call(tmp_path / "pipe.png", lambda: look(tmp_path / "pipe.png"))
    assert isinstance(problem, ImageProblem) and "is not a regular file" in str(problem)
    with pytest.raises(ImageProblem, match="is not a regular file"):
        decode(Path("/dev/zero"), ImageFormat(8, 1))
    with pytest.raises(ImageProblem, match="holds a NUL character"):  # os.open's own ValueError read "does not decode"
        look(tmp_path / "a\0b.png")


def test_format_is_chosen_from_the_pictures(tmp_path: Path) -> None:
    grey = [look(picture(tmp_path / f"g{i}.png", size=(28, 40), mode="L")) for i in range(3)]
    rgb_grey = look(picture(tmp_path / "rg.png", size=(28, 28), colour=(90, 90, 90)))
    assert not rgb_grey.colour  # an RGB file of grey pixels is grey
    fmt, why = choose_format([*grey, rgb_grey])
    assert fmt.shape == (1, 28, 28) and "28" in why and "grey" in why
    big = [look(picture(tmp_path / f"b{i}.png", size=(300, 200))) for i in range(2)]
    fmt, _ = choose_format(big)
    assert fmt.shape == (3, 64, 64)  # the median shorter side 200 is capped at 64; colour seen
    assert choose_format(big, size=32, colour="grey")[0].shape == (1, 32, 32)


def test_featurizer_reads_paths_and_bytes_alike_and_names_a_bad_row(tmp_path: Path) -> None:
    paths = [picture(tmp_path / f"p{i}.png", colour=(i * 40, 0, 0)) for i in range(4)]
    frame = pd.DataFrame({"image": [p.name for p in paths]})
    featurizer, why = fit_featurizer(frame, "image", tmp_path, None, "auto", 40_000_000)
    assert featurizer.fmt.channels == 3 and why
    from_paths = featurizer.transform(frame)
    as_bytes = pd.DataFrame({"image": [p.read_bytes() for p in paths]})
    assert np.array_equal(featurizer.transform(as_bytes), from_paths)
    assert from_paths.shape == (4, len(featurizer.names))
    broken = pd.DataFrame({"image": [paths[0].name, "nowhere.png"]})
    with pytest.raises(ImageProblem, match=r"row 1: .*nowhere.png does not exist"):
        featurizer.transform(broken)


def test_cache_decodes_once_and_is_reused(tmp_path: Path) -> None:
    paths = [picture(tmp_path / f"c{i}.png", colour=(i * 60, 10, 10)) for i in range(3)]
    fmt = ImageFormat(8, 3)
    cache = PixelCache(tmp_path / "cache", fmt)
    assert cache.warm(paths) == {}
    files = list((tmp_path / "cache").glob("pixels-*.npy"))
    assert len(files) == 1
    written = files[0].stat().st_ino
    again = PixelCache(tmp_path / "cache", fmt)  # a second run on the same files maps the file left
    assert again.warm(paths) == {}
    assert list((tmp_path / "cache").glob("pixels-*.npy")) == files and files[0].stat().st_ino == written
    featurizer = ImageFeaturizer("image", fmt, tmp_path, again)
    frame = pd.DataFrame({"image": [p.name for p in paths]})
    first = featurizer.transform(frame)
    assert first[:, 0].tolist() == [0.0, 60.0, 120.0]
    for p in paths:  # the files are gone: only the cache can answer
        p.unlink()
    assert np.array_equal(featurizer.transform(frame), first)


def test_cache_travels_to_a_worker_as_file_names_and_dask_never_hashes_its_pixels(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """A task on a Dask worker gets the cache (and the training rows on it) by pickle, and Dask tokenizes the
    task's arguments first: neither may read the cached pixels (hashing a map per picture took ~25 s a task)."""
    import pickle

    from dask.tokenize import normalize_token, tokenize

    paths = [picture(tmp_path / f"t{i}.png", colour=(i * 40, 20, 30)) for i in range(40)]
    fmt = ImageFormat(32, 3)
    cache = PixelCache(tmp_path / "cache", fmt)
    assert cache.warm(paths) == {}
    cached_bytes = next((tmp_path / "cache").glob("pixels-*.npy")).stat().st_size
    rows = PictureRows(np.zeros((40, 0), np.float32), *cache.locate(paths), fmt.shape)
    np.asarray(rows[:3])  # maps the file in this process, as training does

    sent = pickle.dumps((cache, rows))
    assert len(sent) < cached_bytes / 10  # names and positions, not the 40 pictures
    cache2, rows2 = pickle.loads(sent)
    assert np.array_equal(cache2.get(paths[7]), cache.get(paths[7]))
    assert np.array_equal(np.asarray(rows2[5:9]), np.asarray(rows[5:9]))

    normalize_token(np.zeros(1))  # dask registers its numpy handlers on first use; then ours replaces the map's
    def read_pixels(mm: np.memmap) -> None:
        raise AssertionError(f"dask hashed a mapped cache file of shape {mm.shape}")
    monkeypatch.setitem(normalize_token._lookup, np.memmap, read_pixels)
    assert tokenize(cache, rows) == tokenize(cache2, rows2)  # the same content, the same token
    assert tokenize(rows[:3]) != tokenize(rows[3:6])


def test_cache_files_unused_for_two_weeks_are_removed_and_a_used_one_counts_as_new(tmp_path: Path) -> None:
    import os
    import time

    folder = tmp_path / "cache"
    fmt = ImageFormat(8, 1)
    used = [picture(tmp_path / "used.png")]
    PixelCache(folder, fmt).warm(used)
    (kept,) = folder.glob("pixels-*.npy")
    month = time.time() - 30 * 86400
    stale, recent, partial = folder / "pixels-0stale.npy", folder / "pixels-1recent.npy", folder / "pixels-2.99.tmp"
    for f in (stale, recent, partial):
        f.write_bytes(b"x")
    for f in (stale, partial, kept):
        os.utime(f, (month, month))
    os.utime(recent, (time.time() - 13 * 86400,) * 2)
    PixelCache(folder, fmt).warm(used)  # a later run: uses `kept` (old, but used now), prunes what no run used
    assert sorted(folder.glob("pixels-*")) == sorted([kept, recent])
    assert kept.stat().st_mtime > time.time() - 60


def test_a_cache_keeps_no_file_when_a_picture_fails(tmp_path: Path) -> None:
    good = picture(tmp_path / "ok.png")
    problems = PixelCache(tmp_path / "cache", ImageFormat(8, 1)).warm([good, tmp_path / "gone.png"])
    assert list(problems) == [1] and "does not exist" in problems[1]
    assert not list((tmp_path / "cache").glob("*.npy")) and not list((tmp_path / "cache").glob("*.tmp"))


def test_bytes_that_are_no_picture_are_named_as_sent(tmp_path: Path) -> None:
    featurizer = ImageFeaturizer("image", ImageFormat(8, 1))
    buffer = io.BytesIO()
    Image.new("L", (9, 9), 10).save(buffer, format="PNG")
    frame = pd.DataFrame({"image": [buffer.getvalue(), b"garbage"]})
    with pytest.raises(ImageProblem, match="row 1: the picture sent is not a picture"):
        featurizer.transform(frame)


def test_a_cameras_orientation_tag_is_applied(tmp_path: Path) -> None:
    wide = np.zeros((10, 20), dtype=np.uint8)
    wide[:, :10] = 255  # left half white
    img = Image.fromarray(wide)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    img.save(tmp_path / "turned.png", exif=exif)
    out = decode(tmp_path / "turned.png", ImageFormat(10, 1))[0]
    assert out[:3].mean() > 200 and out[-3:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize("values, mode, fmt, expected", [
    (np.full((8, 8), 0.5, np.float32), "F", "TIFF", 128),  # float within 0..1: the float convention
    (np.full((8, 8), 200.0, np.float32), "F", "TIFF", 200),  # float beyond 1: a 0..255 scale
    (np.full((8, 8), 32768, np.uint16), "I;16", "PNG", 128),  # 16-bit: 0..65535
])
def test_wide_pictures_are_scaled_by_the_range_their_values_use(tmp_path: Path, values, mode, fmt, expected) -> None:
    path = tmp_path / f"wide.{fmt.lower()}"
    Image.fromarray(values).save(path, format=fmt)
    with Image.open(path) as img:
        assert img.mode.startswith(mode[0]) and img.mode in WIDE_MODES  # F, or I / I;16 by Pillow's reading
    assert np.abs(decode(path, ImageFormat(8, 1)).astype(int) - expected).max() <= 1
