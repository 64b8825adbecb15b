"""``data.source: image_folder``: a tree of pictures read as files, as torchvision's ``ImageFolder`` and Hugging
Face's ``imagefolder`` lay them out, written once (per settings and file listing) as train/test Parquet tables of
picture paths that the pipeline then reads like any user's files.

    <path>/<train_dir>/<class>/**     gold pictures, the class is the folder's name
    <path>/<test_dir>/<class>/**      the frozen test split
    <path>/<unlabeled_dir>/**         pictures with no label (optional)
    <path>/<metadata>                 optional CSV keyed by file_name (e.g. ``unlabeled/0001.png``): its other
                                      columns (weak labels, tags, numbers) join each picture's row

Class folders whose names are all integers give integer classes (``0``, ``1``, ...), else names. Only files with
a picture suffix (tasks.core.images.SUFFIXES, any case) are read; hidden files and folders are skipped. Decoding
is left to the validation suite, which names every file that fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pandas as pd

from weakflow.tasks.lib.config import FilesData, ImageFolderData
from weakflow.tasks.lib.errors import DataError

IMAGE = "image"  # the path column (relative to data.path, posix)
LABEL = "label"
FILE_NAME = "file_name"  # the metadata CSV's key, as Hugging Face's imagefolder names it
_INTEGER = re.compile(r"[+-]?[0-9]+")


def materialize_image_folder(cfg: ImageFolderData, root: Path) -> FilesData:
    """Write ``train.parquet`` (gold and unlabelled pictures) and ``test.parquet`` under
    ``root/imagefolder-<key>/`` (key: the settings and every file's path, size and modification time, so an
    added or changed picture makes new tables) and describe them as files; a problem is one DataError naming
    the folder, file or row."""
    base = Path(cfg.path).expanduser().absolute()
    if not base.is_dir():
        raise DataError(f"data.path: {base} is not a folder (expected {cfg.train_dir}/<class>/, {cfg.test_dir}/<class>/ "
                        f"and optionally {cfg.unlabeled_dir}/ and {cfg.metadata})")
    train_dir, test_dir, unlabeled_dir = (_subfolder(base, name, field) for name, field in
                                          ((cfg.train_dir, "data.train_dir"), (cfg.test_dir, "data.test_dir"),
                                           (cfg.unlabeled_dir, "data.unlabeled_dir")))
    for folder, field in ((train_dir, "data.train_dir"), (test_dir, "data.test_dir")):
        if not folder.is_dir():
            raise DataError(f"{field}: the folder {folder} does not exist; image_folder needs {cfg.train_dir}/<class>/ "
                            f"and {cfg.test_dir}/<class>/ under {base}")
    train = _labelled(train_dir, base, "data.train_dir")
    test = _labelled(test_dir, base, "data.test_dir")
    unlabeled = sorted(_pictures(unlabeled_dir, base)) if unlabeled_dir.is_dir() else []
    names = sorted({c for _, c in train})
    unknown = sorted({c for _, c in test} - set(names))
    if unknown:
        raise DataError(f"data.test_dir: {test_dir} has class folder(s) {unknown} that {train_dir} lacks; every test "
                        f"class needs training pictures (training classes: {names})")
    integers = all(_INTEGER.fullmatch(n) for n in names)
    as_class = (lambda n: int(n)) if integers else (lambda n: n)
    classes = [as_class(n) for n in names]
    if integers and len(set(classes)) != len(classes):
        twice = sorted(n for n in names if classes.count(int(n)) > 1)
        raise DataError(f"data.train_dir: class folders {twice} in {train_dir} name the same integer class")
    metadata_path = base / cfg.metadata
    extra = [*cfg.weak_label_columns, *cfg.feature_columns, *cfg.tag_columns]
    if not metadata_path.is_file() and extra:
        raise DataError(f"data.metadata: {metadata_path} does not exist, but data.weak_label_columns / "
                        f"feature_columns / tag_columns name metadata columns {extra}")
    listing = [p for p, _ in train] + [p for p, _ in test] + unlabeled
    key = _key(cfg, base, listing, metadata_path)
    folder = Path(root) / f"imagefolder-{key}"
    try:
        spec = FilesData(train_path=folder / "train.parquet", test_path=folder / "test.parquet",
                         feature_columns=list(cfg.feature_columns), image_columns=[IMAGE], image_root=base,
                         image_size=cfg.image_size, image_colour=cfg.image_colour,
                         image_max_pixels=cfg.image_max_pixels, label_column=LABEL,
                         weak_label_columns=list(cfg.weak_label_columns), tag_columns=list(cfg.tag_columns),
                         abstain=cfg.abstain, classes=classes, seed=cfg.seed)
    except ValueError as exc:  # pydantic's ValidationError: the class set against data.abstain, columns twice
        errors = getattr(exc, "errors", None)
        why = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in errors()) if errors else str(exc)
        raise DataError(f"data.path {base}: {why}") from None
    if spec.train_path.is_file() and spec.test_path.is_file():
        return spec
    meta = _metadata(metadata_path, base, set(listing), cfg) if metadata_path.is_file() else None
    labelled_train = [(p, as_class(c)) for p, c in train] + [(p, None) for p in unlabeled]
    tables = {"train": _table(labelled_train, meta, integers), "test": _table([(p, as_class(c)) for p, c in test],
                                                                              meta, integers)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        tmp = folder / f"{name}.{os.getpid()}.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, folder / f"{name}.parquet")
    return spec


def _subfolder(base: Path, name: str, field: str) -> Path:
    """``base/name``, refused when ``name`` leaves ``base`` (an absolute path or ``..``)."""
    path = (base / name).resolve()
    if not path.is_relative_to(base.resolve()):
        raise DataError(f"{field}: {name!r} is not a folder under data.path {base}")
    return base / name


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def _pictures(folder: Path, base: Path) -> Iterator[str]:
    """Every picture file under ``folder`` (any depth), as its posix path relative to ``base``."""
    from weakflow.tasks.core.images import SUFFIXES

    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES:
                yield (Path(dirpath) / name).relative_to(base).as_posix()


def _labelled(folder: Path, base: Path, field: str) -> list[tuple[str, str]]:
    """(relative path, class folder name) of every picture under ``folder/<class>/``, sorted; a picture outside
    any class folder, an empty class folder, or no picture at all is a DataError naming the folder."""
    from weakflow.tasks.core.images import SUFFIXES

    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in SUFFIXES)
    if loose:
        raise DataError(f"{field}: {folder} holds picture(s) outside a class folder ({', '.join(loose[:3])}"
                        f"{' ...' if len(loose) > 3 else ''}); put each picture under {folder}/<class>/")
    out: list[tuple[str, str]] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(_pictures(sub, base))
        if not found:
            raise DataError(f"{field}: class folder {sub} holds no pictures (suffixes {', '.join(SUFFIXES)}); "
                            "add pictures or remove the folder")
        out += [(p, sub.name) for p in found]
    if not out:
        raise DataError(f"{field}: {folder} holds no pictures in class folders (expected {folder}/<class>/*.png, "
                        f"suffixes {', '.join(SUFFIXES)})")
    return out


def _key(cfg: ImageFolderData, base: Path, listing: list[str], metadata: Path) -> str:
    """The tables' key: the settings, and each file's path, size and modification time (the metadata's too)."""
    digest = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(str(base).encode())
    for rel in [*listing, *([metadata.name] if metadata.is_file() else [])]:
        st = (base / rel).stat()
        digest.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _file_key(name: object) -> str:
    """A metadata ``file_name`` as a posix path relative to data.path (``./a/b.png``, ``a\\b.png`` -> ``a/b.png``)."""
    return PurePosixPath(str(name).strip().replace("\\", "/")).as_posix().removeprefix("./")


def _metadata(path: Path, base: Path, listed: set[str], cfg: ImageFolderData) -> pd.DataFrame:
    """The metadata CSV indexed by file key; every row must name one picture of the tree, once."""
    from weakflow.tasks.lib.tables import check_unique_columns, header_names, unreadable

    field = "data.metadata"
    header = header_names(path, ".csv", field)
    check_unique_columns(header, path, field)
    if FILE_NAME not in header:
        raise DataError(f"{field}: {path} has no column {FILE_NAME!r} (the picture's path under {base}, e.g. "
                        f"{cfg.train_dir}/<class>/0001.png); its columns: {header[:20]}")
    for column in (IMAGE, LABEL):
        if column in header:
            raise DataError(f"{field}: {path} has a column {column!r}, which image_folder sets itself (the picture's "
                            "path and its class folder); rename it")
    for field_name, columns in (("data.weak_label_columns", cfg.weak_label_columns),
                                ("data.feature_columns", cfg.feature_columns), ("data.tag_columns", cfg.tag_columns)):
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{field_name}: {missing} not in {path} (its columns: {header[:20]})")
    text = {c: str for c in [FILE_NAME, *cfg.tag_columns]}
    try:
        frame = pd.read_csv(path, dtype=text, encoding="utf-8-sig")
    except Exception as exc:  # the CSV parser raises many types; all mean "unreadable"
        raise unreadable(field, path, ".csv", exc) from exc
    keys = frame[FILE_NAME].map(lambda v: "" if pd.isna(v) else _file_key(v))
    for row, name in enumerate(keys.tolist()):
        if name not in listed:
            shown = frame[FILE_NAME].iloc[row]
            why = "is empty" if not name else f"names no picture under {base} (a picture file in " \
                  f"{cfg.train_dir}/, {cfg.test_dir}/ or {cfg.unlabeled_dir}/)"
            raise DataError(f"{field}: {path} row {row} (rows count from 0, the header not counted): file_name "
                            f"{shown!r} {why}")
    twice = keys[keys.duplicated(keep=False)]
    if len(twice):
        first = twice.iloc[0]
        rows = twice.index[twice == first].tolist()
        raise DataError(f"{field}: {path} names {first!r} in rows {rows} (rows count from 0, the header not "
                        "counted); give each picture one row")
    return frame.drop(columns=[FILE_NAME]).set_index(keys.rename(None))


def _table(rows: list[tuple[str, object]], meta: pd.DataFrame | None, integers: bool) -> pd.DataFrame:
    """One row per picture: its path, its class (None: unlabelled) and its metadata columns (empty where the
    metadata has no row for it)."""
    paths = [p for p, _ in rows]
    labels = [c for _, c in rows]
    frame = pd.DataFrame({IMAGE: paths, LABEL: pd.array(labels, dtype="Int64") if integers else
                          pd.Series(labels, dtype=object)})
    if meta is not None:
        joined = meta.reindex(paths).reset_index(drop=True)
        frame = pd.concat([frame, joined], axis=1)
    return frame
