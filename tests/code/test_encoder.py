"""The pretrained text encoder (tasks/core/encoder.py) and the text_features stage that chooses it: the real
all-MiniLM-L6-v2 from its registry package, embeddings cached by text hash, saved and loaded with a model,
and ``text.encoder: auto`` deciding on gold rows by the select stage's rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from weakflow.tasks.core import encoder as enc


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return enc.unpack(tmp_path_factory.mktemp("encoders"))


def test_unpacked_weights_are_the_pinned_safetensors(folder):
    assert enc.sha256(folder / "model.safetensors") == enc.WEIGHTS_SHA256
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pkl"))  # nothing pickled is loaded


def test_embeddings_are_cached_by_text_and_read_back_without_the_model(folder, tmp_path):
    frame = pd.DataFrame({"text": ["free prize, call now", "see you at home", "free prize, call now", None]})
    fitted = enc.EncoderFeaturizer.fit(frame, ["text"], folder, cache=tmp_path / "cache")
    x = fitted.transform(frame)
    assert x.shape == (4, len(fitted.names)) == (4, enc.DIMS + 4)
    assert np.array_equal(x[0], x[2]) and not np.allclose(x[0, :enc.DIMS], x[1, :enc.DIMS])
    assert np.allclose(np.linalg.norm(x[:, :enc.DIMS], axis=1), 1.0, atol=1e-4)  # mean pooling, then Normalize
    # a later run (another featurizer on the same cache) whose model folder is gone still reads every
    # embedding: nothing is encoded twice; a new text needs the model, and says so
    absent = enc.EncoderFeaturizer.fit(frame, ["text"], tmp_path / "no-model", cache=tmp_path / "cache")
    assert np.array_equal(absent.transform(frame), x)
    with pytest.raises(enc.EncoderUnavailable, match="no model.safetensors"):
        absent.transform(pd.DataFrame({"text": ["a text never encoded"]}))


def test_the_cache_keeps_at_most_its_limit_and_a_killed_write_leaves_no_shard(tmp_path):
    vectors = np.eye(3, enc.DIMS, dtype=np.float32)
    cache = enc.EmbeddingCache(tmp_path / "c", limit=2)
    cache.add(np.array([7, 3, 5], np.uint64), vectors)
    assert cache.keys.tolist() == [3, 7] and len(list((tmp_path / "c").glob("*.npz"))) == 1
    (tmp_path / "c" / ".partial.tmp.npz").write_bytes(b"cut short")  # what a killed writer leaves
    again = enc.EmbeddingCache(tmp_path / "c")
    found_vectors, found = again.lookup(np.array([3, 5, 7], np.uint64))
    assert found.tolist() == [True, False, True] and np.array_equal(found_vectors[0], vectors[1])


def test_a_saved_model_carries_the_encoder_and_scores_raw_strings(folder, tmp_path):
    from weakflow.deploy.model import load_weights, save_weights
    from weakflow.tasks.core.models import ModelSpec, build_model
    from weakflow.tasks.core.schema import InputSchema
    from weakflow.tasks.core.training import predict_proba

    frame = pd.DataFrame({"n": [1.0, 2.0], "text": ["WINNER!! claim your prize", "ok see you later"]})
    schema = InputSchema(["n"], ["text"], enc.EncoderFeaturizer.fit(frame, ["text"], folder))
    torch.manual_seed(0)
    spec = ModelSpec("mlp", len(schema.names), 2, hidden=(8,))
    model = build_model(spec).eval()
    save_weights(tmp_path / "model.pt", model, spec, schema, ["ham", "spam"])
    loaded = load_weights(tmp_path / "model.pt", folder)
    assert loaded.schema.names == schema.names and loaded.schema.featurizer.cache is None
    expected = predict_proba(model, schema.x(frame), device="cpu")
    assert np.allclose(loaded.predict_proba(frame[["n", "text"]]), expected, atol=1e-6)
    meta = torch.load(tmp_path / "model.pt", weights_only=True)["meta"]
    assert enc.WEIGHTS_SHA256 in meta and enc.PACKAGE in meta


def _texts_data(rows: list[tuple[str, int]], gold: int):
    from weakflow.tasks.lib.config import FilesData
    from weakflow.tasks.lib.data import RawTables, assemble

    frame = pd.DataFrame(rows, columns=["text", "y"]).sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame["y"] = frame["y"].astype(object)
    frame.loc[gold:, "y"] = None
    spec = FilesData(train_path="t.csv", test_path="s.csv", text_columns=["text"], label_column="y")
    test = pd.DataFrame({"text": ["x"], "y": [0]})
    return assemble(RawTables(frame, test, spec), [0, 1])


def _choose(data, encoder: str, tmp_path):
    from weakflow.tasks import text_features
    from weakflow.tasks.lib.config import load_config
    from weakflow.tasks.lib.steps import RunContext

    cfg = load_config(None, [f"tracking.workspace={tmp_path}", f"text.encoder={encoder}", "weak_train.epochs=40"])
    return text_features.compute(RunContext.of(cfg), data, cfg.text, cfg.gold_only.resolved(cfg.weak_train),
                                 cfg.selection)


ANIMALS = ["dog", "cat", "horse", "puppy", "kitten", "cow", "sheep", "goat", "rabbit", "hamster", "parrot",
           "pony", "donkey", "pig", "chicken", "duck", "goose", "turkey", "mouse", "squirrel", "fox", "wolf",
           "bear", "deer", "lion", "tiger", "zebra", "giraffe", "elephant", "monkey"]
VEHICLES = ["car", "truck", "bus", "train", "bicycle", "motorbike", "van", "tram", "taxi", "scooter", "lorry",
            "tractor", "ambulance", "minibus", "jeep", "limousine", "coach", "trolleybus", "moped", "pickup",
            "sedan", "convertible", "hatchback", "caravan", "forklift", "bulldozer", "excavator", "snowmobile",
            "motorcycle", "ferry"]


def test_auto_takes_the_encoder_where_meaning_carries_the_class(tmp_path):
    # every noun appears in one sentence only: no word or character n-gram carries a class from one fold
    # to the next, what the nouns mean does
    rows = [(f"yesterday I watched a {w} near the old house", 0) for w in ANIMALS]
    rows += [(f"yesterday I watched a {w} near the old house", 1) for w in VEHICLES]
    choice = _choose(_texts_data(rows, len(rows)), "auto", tmp_path)
    assert choice.chosen == "minilm", choice.reason
    assert choice.oof_accuracy["minilm"] > choice.oof_accuracy["hashed"] + 2 / len(rows)
    assert isinstance(choice.data.schema.featurizer, enc.EncoderFeaturizer)
    assert "encoder 0." in choice.reason and "hashed 0." in choice.reason  # both figures, in words


def test_the_encoder_needs_a_clear_gain_on_the_gold_rows():
    from weakflow.tasks.text_features import judge

    y = np.arange(200) % 2
    right, wrong = np.eye(2)[y] * 0.8 + 0.1, np.eye(2)[1 - y] * 0.8 + 0.1

    def probs(errors: int) -> np.ndarray:  # every row right but the first ``errors``
        return np.vstack([wrong[:errors], right[errors:]])

    assert judge({"hashed": probs(40), "minilm": probs(10)}, y)[0] == "minilm"  # 30 rows better: clear
    chosen, reason, acc, _ = judge({"hashed": probs(12), "minilm": probs(10)}, y)  # 2 rows: noise
    assert chosen == "hashed" and acc == {"hashed": 0.94, "minilm": 0.95} and "no clear gain" in reason
    assert judge({"hashed": probs(10), "minilm": probs(40)}, y)[0] == "hashed"


def test_auto_keeps_hashed_n_grams_for_a_script_the_encoder_does_not_know(tmp_path):
    # Runic letters: the encoder's vocabulary has none (each word is [UNK]), the character n-grams see them
    rng = np.random.default_rng(0)
    letters = np.array(list("ᚠᚢᚦᚨᚱᚲᚷᚹᚺᚾᛁᛃᛇᛈᛉᛊᛏᛒᛖᛗᛚᛜᛞᛟ"))

    def word() -> str:
        return "".join(rng.choice(letters, 4))

    rows = [(f"{word()} {key} {word()} {word()}", y) for y, key in ((0, "ᚠᚢᚦᚨ"), (1, "ᛗᛚᛜᛞ")) for _ in range(40)]
    choice = _choose(_texts_data(rows, len(rows)), "auto", tmp_path)
    assert choice.chosen == "hashed", choice.reason
    assert choice.oof_accuracy["hashed"] > choice.oof_accuracy["minilm"], choice.reason


def test_absent_package_keeps_hashed_under_auto_and_fails_minilm_in_one_line(tmp_path, monkeypatch):
    from weakflow.tasks.lib.errors import ConfigError

    data = _texts_data([(f"message {i}", i % 2) for i in range(12)], 12)
    monkeypatch.setattr(enc, "MODULE", "no_such_encoder_package")  # as if the wheel were not installed
    choice = _choose(data, "auto", tmp_path)
    assert choice.chosen == "hashed" and "not installed" in choice.reason
    assert choice.data.schema.featurizer is not None and choice.data.schema.featurizer.kind == "hashed"
    with pytest.raises(ConfigError, match="text.encoder = minilm.*not installed") as err:
        _choose(data, "minilm", tmp_path)
    assert "\n" not in str(err.value)
