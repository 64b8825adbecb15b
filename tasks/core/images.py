"""Pictures into arrays the networks can read, with no download: decoding with Pillow, the picture size and
colour chosen from the data, and a decoded cache on disk (resized uint8 arrays, memory-mapped).

A picture is decoded once per run into ``(channels, size, size)`` uint8: EXIF orientation applied,
transparency laid on white, 16-bit and float pictures scaled to 8 bits, centre-cropped to a square and
resized (the torchvision ``Resize`` + ``CenterCrop`` convention). Pillow's decompression-bomb limit stays
in force, and ``max_pixels`` bounds every picture below it. Torch-free: the validation suite, the server
and the drift checks decode with it too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import stat
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import pandas as pd

from weakflow.tasks.core.picture_rows import PictureRows, StreamPolicy

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF")  # what Pillow may decode
SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SIZE_RANGE = (16, 64)  # the default side: the data's median shorter side, within these bounds
SAMPLE = 256  # pictures looked at to choose size and colour
Colour = Literal["auto", "grey", "colour"]


UNUSED_DAYS = 14  # a cache file no run has read for this long is removed: retraining on new files adds one each time
PASS_VALUES = 2**19  # pixel values per forward pass when scoring pictures (a network's activations are ~100x that)


def rows_per_pass(values: int) -> int:
    """Pictures of ``values`` pixel values each per forward pass when scoring: 32 to 2,048 (668 at 28x28 grey,
    128 at 64x64 colour), so scoring a large table does not hold gigabytes of activations."""
    return int(min(2048, max(32, PASS_VALUES // max(int(values), 1))))


class ImageProblem(ValueError):
    """A picture that cannot be used; the message says why (the caller adds the file and the row)."""


@dataclass(frozen=True)
class ImageFormat:
    """What every picture becomes: ``channels`` (1 grey, 3 colour) x ``size`` x ``size`` uint8."""

    size: int
    channels: int
    max_pixels: int = 40_000_000

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    @property
    def values(self) -> int:
        return self.channels * self.size * self.size


@dataclass(frozen=True)
class Look:
    """A picture's header facts (what choosing the format and the validation checks read)."""

    width: int
    height: int
    mode: str
    format: str
    colour: bool  # differs between channels somewhere (an RGB file of grey pixels is grey)


class NotAPictureFile(OSError):
    """A path that names a FIFO, a device or a socket: reading one would block for ever (a FIFO with no writer)
    or never end (``/dev/zero``)."""


def open_picture(path: str | Path) -> BinaryIO:
    """A picture file opened for reading, refusing anything but a regular file before one byte is read (a
    table or folder may name a FIFO or a device: opening one normally waits for a writer, for ever). Raises
    FileNotFoundError, IsADirectoryError or :class:`NotAPictureFile` (all OSError)."""
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no FIFOs to wait on
    if "\0" in str(path):  # os.open would raise ValueError: no file can have this name
        raise NotAPictureFile(errno.EINVAL, "is not a file name (it holds a NUL character)", str(path))
    fd = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
        if not stat.S_ISREG(mode):
            raise NotAPictureFile(errno.EINVAL, "is not a regular file (a FIFO, device or socket)", str(path))
        if nonblocking:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_picture(path: str | Path) -> bytes:
    """A picture file's bytes (:func:`open_picture`'s refusals apply)."""
    with open_picture(path) as handle:
        return handle.read()


_QUIET: list[bool] = []


def _open(source: bytes | str | Path, max_pixels: int):  # -> PIL.Image.Image, fully decoded
    from PIL import Image

    if not _QUIET:  # max_pixels is at most Pillow's warning limit: a picture it warns about is refused below anyway
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _QUIET.append(True)
    try:
        handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open_picture(source)
        with handle:
            img = Image.open(handle, formats=FORMATS)
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageProblem(f"has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageProblem(f"is {width}x{height} = {width * height:,} pixels; at most {max_pixels:,} "
                                   "are accepted (data.image_max_pixels)")
            img.load()
            return img
    except ImageProblem:
        raise
    except FileNotFoundError:
        raise ImageProblem("does not exist") from None
    except IsADirectoryError:
        raise ImageProblem("is a folder, not a picture file") from None
    except NotAPictureFile as exc:
        raise ImageProblem(f"{exc.strerror}; expected a picture file") from None
    except Image.DecompressionBombError as exc:
        raise ImageProblem(f"is larger than Pillow's decompression-bomb limit ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageProblem(f"is not a picture in one of the formats {', '.join(FORMATS)}") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ImageProblem(f"does not decode ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def look(source: bytes | str | Path, max_pixels: int = 40_000_000) -> Look:
    """Decode a picture and read its facts (raises :class:`ImageProblem`)."""
    img = _open(source, max_pixels)
    return Look(img.width, img.height, img.mode, img.format or "", _is_colour(img))


def _is_colour(img) -> bool:
    if img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        return False
    small = np.asarray(_eight_bit(img).convert("RGB").resize((32, 32)), dtype=np.int16)
    return bool(np.abs(small - small.mean(axis=2, keepdims=True)).max() > 8)


WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # more than 8 bits per pixel: scaled, not clipped


def wide_to_grey(img):  # -> an 8-bit grey PIL image of a WIDE_MODES picture
    """Scaled by the range its values say it uses: 16-bit (or any value above 255) as 0..65535, a float picture
    whose values all lie within 0..1 (the usual float convention) as 0..1, else 0..255."""
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
    if img.mode == "F" and a.size and a.min() >= 0.0 and a.max() <= 1.0:
        top = 1.0
    return Image.fromarray(np.clip(a / top * 255.0, 0, 255).round().astype(np.uint8), "L")


def _eight_bit(img):  # 16-bit / 32-bit / float pictures scaled to 0..255, alpha laid on white
    from PIL import Image

    if img.mode in WIDE_MODES:
        return wide_to_grey(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGB" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img


def decode(source: bytes | str | Path, fmt: ImageFormat) -> np.ndarray:
    """One picture as ``fmt.shape`` uint8 (raises :class:`ImageProblem`)."""
    from PIL import Image, ImageOps

    img = _open(source, fmt.max_pixels)
    try:
        if img.format in ("JPEG", "WEBP", "TIFF", "PNG") and img.getexif().get(0x0112, 1) != 1:
            img = ImageOps.exif_transpose(img)  # the camera's orientation tag, where there is one
        img = _eight_bit(img)
        img = img.convert("L" if fmt.channels == 1 else "RGB")
        if img.size != (fmt.size, fmt.size):
            img = ImageOps.fit(img, (fmt.size, fmt.size), Image.Resampling.BILINEAR)
    except (OSError, ValueError) as exc:
        raise ImageProblem(f"does not convert ({type(exc).__name__}: {exc})") from None
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def choose_format(looks: Sequence[Look], size: int | None = None, colour: Colour = "auto",
                  max_pixels: int = 40_000_000) -> tuple[ImageFormat, str]:
    """The format for these pictures and a sentence saying why: the side is ``size`` or the median shorter
    side within :data:`SIZE_RANGE`; colour when asked or when a looked-at picture has colour."""
    if size is None:
        sides = [min(lk.width, lk.height) for lk in looks] or [SIZE_RANGE[1]]
        median = int(np.median(sides))
        size = int(min(max(median, SIZE_RANGE[0]), SIZE_RANGE[1]))
        how = f"{size}x{size} px (median shorter side {median} px of {len(looks)} pictures, kept within {SIZE_RANGE})"
    else:
        how = f"{size}x{size} px (data.image_size)"
    if colour == "auto":
        channels = 3 if any(lk.colour for lk in looks) else 1
        why = "colour" if channels == 3 else f"grey (none of {len(looks)} pictures has colour)"
    else:
        channels = 3 if colour == "colour" else 1
        why = f"{colour} (data.image_colour)"
    return ImageFormat(size, channels, max_pixels), f"pictures read as {how}, {why}"


def sample_paths(paths: Sequence[Path], n: int = SAMPLE, seed: int = 0) -> list[Path]:
    if len(paths) <= n:
        return list(paths)
    at = np.random.default_rng(seed).choice(len(paths), size=n, replace=False)
    return [paths[i] for i in sorted(at)]


def workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decode_many(sources: Sequence[bytes | Path], fmt: ImageFormat, out: np.ndarray | None = None,
                threads: int | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Decode ``sources`` in parallel threads (Pillow releases the GIL while decoding) into ``out`` (or a new
    array); returns it and {position: problem} for the ones that failed (their rows stay zero)."""
    out = np.zeros((len(sources), *fmt.shape), np.uint8) if out is None else out
    problems: dict[int, str] = {}

    def one(i: int) -> None:
        try:
            out[i] = decode(sources[i], fmt)
        except ImageProblem as exc:
            problems[i] = str(exc)

    with ThreadPoolExecutor(max_workers=threads or workers()) as pool:
        list(pool.map(one, range(len(sources)), chunksize=64))
    return out, problems


def resolve(cell: object, root: Path | None) -> Path:
    """A path cell as a file path: relative paths start from ``root``."""
    path = Path(str(cell)).expanduser()
    return path if path.is_absolute() or root is None else Path(root) / path


@dataclass
class PixelCache:
    """Decoded pictures on disk, one ``.npy`` file per set of files (keyed by their paths, sizes and modification
    times and the format), memory-mapped on reading: a second run, or a stage after the first, decodes nothing.

    It knows each picture as (cache file, row), not by a map per picture: a task shipped to a Dask worker carries
    the file names, never the pixels (pickling a map copies the whole file), and Dask's tokenizing of a task's
    arguments names the files instead of hashing a file per picture (that cost about 25 s a task)."""

    folder: Path
    fmt: ImageFormat
    _index: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (position in _files, row)
    _files: list[Path] = field(default_factory=list)
    _maps: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:  # a worker maps the files itself
        return {**self.__dict__, "_maps": {}}

    def __dask_tokenize__(self) -> tuple:
        """A cache file's name is a digest of the pictures' paths, sizes, times and format: the names (and which
        picture lies where) identify the content without reading it."""
        return (type(self).__name__, str(self.folder), repr(self.fmt), tuple(map(str, self._files)),
                tuple(sorted(self._index.items())))

    def _map(self, f: int) -> np.ndarray:
        if f not in self._maps:
            self._maps[f] = np.load(self._files[f], mmap_mode="r")
        return self._maps[f]

    def warm(self, paths: Sequence[Path]) -> dict[int, str]:
        """Decode ``paths`` into the cache (or map the file a previous run left); {position: problem}."""
        paths = [Path(p) for p in paths]
        if not paths:
            return {}
        key = hashlib.sha256(repr(self.fmt).encode())
        for p in paths:
            try:
                st = p.stat()
                key.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                key.update(f"{p}|missing\n".encode())
        target = Path(self.folder) / f"pixels-{key.hexdigest()[:20]}.npy"
        problems: dict[int, str] = {}
        if target.is_file():
            pixels = np.load(target, mmap_mode="r")
            with contextlib.suppress(OSError):  # a read-only cache still serves; it is only not marked as used
                os.utime(target)  # its modification time says when a run last used it (see prune)
        else:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *self.fmt.shape))
            _, problems = decode_many(paths, self.fmt, out=pixels)
            pixels.flush()
            del pixels
            if problems:  # a cache holds only pictures that decoded
                tmp.unlink(missing_ok=True)
                return problems
            os.replace(tmp, target)
            pixels = np.load(target, mmap_mode="r")
        if target not in self._files:
            self._files.append(target)
        f = self._files.index(target)
        self._maps[f] = pixels
        for i, p in enumerate(paths):
            self._index[str(p)] = (f, i)
        self.prune(keep=target)
        return problems

    def prune(self, keep: Path, days: float = UNUSED_DAYS) -> list[Path]:
        """Remove the cache files (and a crashed run's partial ones) no run has used for ``days``: scheduled
        retraining on new pictures would otherwise grow the folder by one file per run. Age, not count,
        decides, so a run still reading an older file is never pulled from under it. Returns what went."""
        cutoff = time.time() - days * 86400
        gone = []
        for f in Path(self.folder).glob("pixels-*"):
            try:
                if f != keep and f.stat().st_mtime < cutoff:
                    f.unlink()
                    gone.append(f)
            except OSError:  # another run removed or replaced it meanwhile
                continue
        return gone

    def get(self, path: Path) -> np.ndarray | None:
        hit = self._index.get(str(path))
        return None if hit is None else self._map(hit[0])[hit[1]]

    def locate(self, paths: Sequence[Path]) -> tuple[tuple[Path, ...], np.ndarray, np.ndarray] | None:
        """Where each picture lies in the cache files: (files, which file per path, row in it); None when one
        is not cached."""
        files: dict[str, int] = {}
        which = np.empty(len(paths), np.int32)
        at = np.empty(len(paths), np.int64)
        for i, p in enumerate(paths):
            hit = self._index.get(str(p))
            if hit is None:
                return None
            which[i] = files.setdefault(str(self._files[hit[0]]), len(files))
            at[i] = hit[1]
        return tuple(Path(f) for f in files), which, at


@dataclass
class ImageFeaturizer:
    """A column of pictures (file paths, or the bytes of a picture when serving) as the model's pixel features:
    ``fmt.values`` float32 values per row, 0..255, channel-major (the network standardises them)."""

    column: str
    fmt: ImageFormat
    root: Path | None = None
    cache: PixelCache | None = None
    chosen: str = ""  # why this format (said in the run; not saved with a model)
    augment: tuple[float, float, float] | None = None  # (crop padding share, flip 0/1, jitter) while training
    stream: StreamPolicy | None = None  # when a table this large is read from the cache as it trains (not saved)

    @property
    def names(self) -> list[str]:
        c, s, _ = self.fmt.shape
        return [f"{self.column}:c{k}_{y}_{x}" for k in range(c) for y in range(s) for x in range(s)]

    def paths(self, frame: pd.DataFrame) -> list[Path]:
        return [resolve(v, self.root) for v in frame[self.column].tolist()]

    def pixels(self, frame: pd.DataFrame) -> np.ndarray:
        """(rows, channels, size, size) uint8; raises :class:`ImageProblem` naming the first bad row and file."""
        cells = frame[self.column].tolist()
        out = np.zeros((len(cells), *self.fmt.shape), np.uint8)
        todo: list[int] = []
        sources: list[bytes | Path] = []
        for i, cell in enumerate(cells):
            if isinstance(cell, (bytes, bytearray)):
                todo.append(i)
                sources.append(bytes(cell))
                continue
            if cell is None or (isinstance(cell, float) and np.isnan(cell)):
                raise ImageProblem(f"column {self.column!r} row {i}: empty cell; expected a picture")
            path = resolve(cell, self.root)
            hit = self.cache.get(path) if self.cache is not None else None
            if hit is not None:
                out[i] = hit
            else:
                todo.append(i)
                sources.append(path)
        if todo:
            decoded, problems = decode_many(sources, self.fmt)
            if problems:
                at, why = next(iter(sorted(problems.items())))
                shown = "the picture sent" if isinstance(sources[at], bytes) else str(sources[at])
                raise ImageProblem(f"column {self.column!r} row {todo[at]}: {shown} {why}")
            out[todo] = decoded
        return out

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self.pixels(frame).reshape(len(frame), self.fmt.values).astype(np.float32)

    def on_disk(self, frame: pd.DataFrame, side: np.ndarray) -> PictureRows | None:
        """``frame``'s rows as a :class:`PictureRows` read from the cache as needed, when the stream policy says
        the table is too large to hold as float32 and every picture is cached; else None."""
        if self.stream is None or self.cache is None or not self.stream.streams(len(frame), side.shape[1] + self.fmt.values):
            return None
        where = self.cache.locate(self.paths(frame))
        if where is None:
            return None
        files, which, at = where
        return PictureRows(side, files, which, at, self.fmt.shape, self.stream.workers)

    def state(self) -> dict:
        return {"column": self.column, "size": self.fmt.size, "channels": self.fmt.channels,
                "max_pixels": self.fmt.max_pixels}

    @classmethod
    def from_state(cls, state: dict) -> ImageFeaturizer:
        return cls(state["column"], ImageFormat(int(state["size"]), int(state["channels"]), int(state["max_pixels"])))


def fit_featurizer(frame: pd.DataFrame, column: str, root: Path | None, size: int | None, colour: Colour,
                   max_pixels: int, seed: int = 0) -> tuple[ImageFeaturizer, str]:
    """Choose the format from a sample of ``frame``'s pictures (no label read); the featurizer and why."""
    paths = [resolve(v, root) for v in frame[column].dropna().tolist()]
    looks = []
    for p in sample_paths(paths, seed=seed):
        try:
            looks.append(look(p, max_pixels))
        except ImageProblem:
            continue  # the validation suite names bad files; the format is chosen from the good ones
    fmt, why = choose_format(looks, size, colour, max_pixels)
    return ImageFeaturizer(column, fmt, root, chosen=why), why


def iter_chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
