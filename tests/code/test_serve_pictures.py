"""Pictures through every way of scoring a registered model: ``POST /predict`` with base64 pictures (limits,
content checked by decoding, never a server-side path; the prediction log keeps a hash, the size and the
descriptors, not the bytes), ``weakflow predict`` over a file of picture paths, and the MLflow signature.

The model is a tiny real picture network (kind ``resnet``, 16x16 grey, random weights) saved with
``save_weights`` and registered in a real SQLite MLflow registry; no pipeline runs.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import torch
from PIL import Image, ImageFilter

from weakflow.deploy.model import load_weights, save_weights
from weakflow.tasks.core.images import ImageFeaturizer, ImageFormat
from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.picture_stats import DESCRIPTORS, embedding_names, logged_names, picture_descriptors
from weakflow.tasks.core.schema import InputSchema
from weakflow.tasks.lib.data import DataError
from tests.tiny_model import ENTRY, use_registry

SIZE = 16
MAX_PIXELS = 64 * 64  # the model's data.image_max_pixels: a 65x65 picture is refused
CLASSES = ["bag", "boot", "coat"]


def picture(seed: int, size: tuple[int, int] = (20, 24), colour: bool = False, fmt: str = "PNG") -> bytes:
    """The bytes of a small random picture file."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if colour else (size[1], size[0])
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def register_picture_model(folder: Path, name: str, numeric: list[str], channels: int) -> Path:
    """A tiny picture network (``numeric`` columns beside the picture) registered as ``name`` v1, alias
    champion, on the current tracking URI; returns its weights file."""
    torch.manual_seed(0)
    schema = InputSchema(numeric, [], None, ImageFeaturizer("image", ImageFormat(SIZE, channels, MAX_PIXELS)))
    values = channels * SIZE * SIZE
    spec = ModelSpec(kind="resnet", num_features=len(numeric) + values, num_classes=len(CLASSES), hidden=(16,),
                     dropout=0.0, image_shape=(channels, SIZE, SIZE))
    model = build_model(spec)
    with torch.no_grad():  # a head that separates the classes clearly, so the predictions differ by picture
        model.head.weight.copy_(torch.randn_like(model.head.weight) * 5)
    model.eval()
    weights = folder / f"{name}.pt"
    save_weights(weights, model, spec, schema, CLASSES)
    with mlflow.start_run(run_name=name):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(ENTRY), artifacts={"weights": str(weights)},
                                       pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    version = mlflow.register_model(info.model_uri, name).version
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return weights


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[str, dict[str, Path]]:
    """``pics`` (a 16x16 grey picture only) and ``mixed`` (a number ``size_cm`` and a 16x16 colour picture),
    each v1 champion of one registry: the tracking URI and each model's weights file."""
    folder = tmp_path_factory.mktemp("picture-model")
    uri = use_registry(folder)
    weights = {"pics": register_picture_model(folder, "pics", [], 1),
               "mixed": register_picture_model(folder, "mixed", ["size_cm"], 3)}
    return uri, weights


@pytest.fixture
def picture_model(registry) -> tuple[Path, str]:
    """The ``pics`` model's weights file and the tracking URI."""
    uri, weights = registry
    return weights["pics"], uri


def expected_probs(weights: Path, pictures: list[bytes]) -> np.ndarray:
    """What the saved model answers for these pictures, through its own featurizer (bytes cells)."""
    loaded = load_weights(weights)
    return loaded.predict_proba(pd.DataFrame({"image": pictures}))


@pytest.fixture
def client(picture_model, tmp_path):
    from fastapi.testclient import TestClient

    from weakflow.deploy.serve import create_app

    _, uri = picture_model
    mlflow.set_tracking_uri(uri)
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    app = create_app("pics", poll_seconds=0, log_url=log_url, max_image_bytes=8000)
    with TestClient(app) as http:
        yield http, app, log_url


def logged(app, log_url: str) -> list[dict]:
    assert app.state.weakflow["log"].flush(30)
    engine = sa.create_engine(log_url)
    try:
        with engine.connect() as conn:
            return [json.loads(f) for (f,) in conn.execute(sa.text("select features from predictions order by id"))]
    finally:
        engine.dispose()


def test_predict_takes_base64_pictures_and_logs_hash_size_and_descriptors(picture_model, client):
    weights, _ = picture_model
    http, app, log_url = client
    sent = [picture(1), picture(2, (40, 30), colour=True), picture(3, (17, 17), fmt="JPEG"), picture(4, fmt="BMP")]
    records = [{"image": b64(sent[0])}, {"image": "data:image/png;base64," + b64(sent[1])},
               {"image": b64(sent[2])}, {"image": base64.encodebytes(sent[3]).decode()}]  # MIME lines
    r = http.post("/predict", json={"records": records})
    assert r.status_code == 200, r.text
    got = np.array([[p["probabilities"][c] for c in CLASSES] for p in r.json()["predictions"]])
    np.testing.assert_allclose(got, expected_probs(weights, sent), atol=2e-5)
    assert len({p["class"] for p in r.json()["predictions"]}) > 1  # the pictures decide the answer

    rows = logged(app, log_url)
    assert len(rows) == 4
    loaded = load_weights(weights)
    with torch.no_grad():
        want = loaded.model(torch.from_numpy(loaded.schema.x(pd.DataFrame({"image": sent}))), return_features=True)[0]
    for row, data, embedding in zip(rows, sent, want.numpy()):
        # no "image" field: the bytes are not kept; the network's picture embedding is
        assert set(row) == set(logged_names("image")) | set(embedding_names("image", 16))
        np.testing.assert_allclose([row[f"image:embedding_{k}"] for k in range(16)], embedding, atol=1e-4)
        assert row["image:bytes"] == len(data)
        import hashlib

        assert row["image:sha256"] == hashlib.sha256(data).hexdigest()
        assert 0.0 <= row["image:brightness"] <= 1.0 and row["image:sharpness"] > 0
    assert (rows[1]["image:width"], rows[1]["image:height"]) == (40, 30)  # the picture's own size
    assert rows[0]["image:colourfulness"] == 0.0
    assert b64(sent[0])[:40] not in json.dumps(rows)

    info = http.get("/model").json()
    assert info["image_columns"] == ["image"] and info["image_format"]["size"] == SIZE
    assert info["max_image_bytes"] == 8000


def test_predict_refuses_bad_pictures_naming_the_record(picture_model, client, tmp_path):
    http, app, log_url = client
    on_disk = tmp_path / "secret.png"  # a picture on the server's disk: its path must never be read
    on_disk.write_bytes(picture(5))
    big = picture(6, (100, 100))  # noisy PNG: larger than max_image_bytes=8000
    assert len(big) > 8000
    cases = {
        "not base64!": ("picture_encoding", "not base64"),
        b64(b"just some bytes, no picture"): ("picture", "is not a picture"),
        b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40): ("picture", "the picture sent"),
        str(on_disk): ("picture_encoding", "not base64"),
        b64(big): ("picture_encoding", "serve.max_image_bytes"),
        b64(picture(7, (65, 65), fmt="JPEG")): ("picture", "data.image_max_pixels"),
        "": ("picture_encoding", "empty"),
    }
    before = app.state.weakflow["batcher"].rows
    for value, (kind, words) in cases.items():
        r = http.post("/predict", json={"records": [{"image": b64(picture(8))}, {"image": value}]})
        assert r.status_code == 422, (value[:30], r.text)
        detail = r.json()["detail"]
        assert detail[0]["field"] == "records[1].image", detail
        assert detail[0]["type"] == kind and words in detail[0]["message"], detail
    r = http.post("/predict", json={"records": [{"image": 123}]})  # not a string at all: the schema says so
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "records[0].image", r.text
    r = http.post("/predict", json={"records": [{"image": "x"}] * 30})
    assert r.status_code == 422 and r.json()["error_count"] == 30 and len(r.json()["detail"]) == 20
    assert app.state.weakflow["batcher"].rows == before  # nothing reached the model
    assert logged(app, log_url) == []


def test_picture_descriptors_measure_what_they_say():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (1, 32, 32), dtype=np.uint8)
    d = picture_descriptors(grey)
    assert list(d) == list(DESCRIPTORS)
    assert d["red"] == d["green"] == d["blue"] == pytest.approx(d["brightness"]) and d["colourfulness"] == 0.0
    assert picture_descriptors(grey // 2)["brightness"] == pytest.approx(d["brightness"] / 2, abs=0.01)
    assert picture_descriptors(grey // 2)["contrast"] < d["contrast"]
    blurred = np.asarray(Image.fromarray(grey[0]).filter(ImageFilter.GaussianBlur(2)))[None]
    assert picture_descriptors(blurred)["sharpness"] < d["sharpness"] / 4
    ramp = picture_descriptors(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))[None])  # no edge at all
    assert ramp["contrast"] > 0.25 and ramp["sharpness"] == pytest.approx(0.0, abs=1e-12)
    red = np.zeros((3, 8, 8), np.uint8)
    red[0] = 255
    r = picture_descriptors(red, width=640, height=480)
    assert (r["red"], r["green"], r["blue"], r["width"], r["height"]) == (1.0, 0.0, 0.0, 640.0, 480.0)
    assert r["colourfulness"] == pytest.approx(0.3 * np.hypot(1.0, 0.5))  # Hasler-Suesstrunk, on 0..1
    assert picture_descriptors(Image.fromarray(red.transpose(1, 2, 0))) == picture_descriptors(red)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        picture_descriptors(np.zeros((2, 4, 4), np.uint8))


def write_pictures(folder: Path, n: int) -> list[bytes]:
    (folder / "pics").mkdir(parents=True)
    out = []
    for i in range(n):
        data = picture(100 + i, (18 + i % 5, 20), colour=i % 2 == 0)
        (folder / "pics" / f"p{i}.png").write_bytes(data)
        out.append(data)
    return out


def test_batch_predict_scores_a_file_of_picture_paths(picture_model, tmp_path, monkeypatch):
    from weakflow.tasks import batch_predict
    from weakflow.tasks.batch_predict import load_scoring_model, score_file

    monkeypatch.setattr(batch_predict, "PICTURE_SLICE_BYTES", 3 * SIZE * SIZE)  # slices of 3 pictures per chunk

    weights, uri = picture_model
    mlflow.set_tracking_uri(uri)
    model = load_scoring_model("pics", "1")
    assert model.inputs == ["image"]
    data = write_pictures(tmp_path / "in", 12)
    paths = [f"pics/p{i}.png" for i in range(12)]
    pd.DataFrame({"image": paths}).to_csv(tmp_path / "in" / "score.csv", index=False)
    rows = score_file(model, tmp_path / "in" / "score.csv", tmp_path / "out.parquet", chunk_rows=5)
    assert rows == 12
    out = pd.read_parquet(tmp_path / "out.parquet")
    want = expected_probs(weights, data)
    np.testing.assert_allclose(out[[f"prob_{c}" for c in CLASSES]].to_numpy(), want, atol=2e-5)
    assert out["row_id"].tolist() == list(range(12))

    # the same pictures as bytes in a Parquet binary column; and the paths from another folder via image_root
    pd.DataFrame({"image": data}).to_parquet(tmp_path / "bytes.parquet", index=False)
    score_file(model, tmp_path / "bytes.parquet", tmp_path / "out2.csv")
    np.testing.assert_allclose(pd.read_csv(tmp_path / "out2.csv")[[f"prob_{c}" for c in CLASSES]].to_numpy(), want,
                               atol=2e-5)
    pd.DataFrame({"image": [f"p{i}.png" for i in range(12)]}).to_csv(tmp_path / "elsewhere.csv", index=False)
    score_file(model, tmp_path / "elsewhere.csv", tmp_path / "out3.parquet", image_root=tmp_path / "in" / "pics")
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "out3.parquet")[[f"prob_{c}" for c in CLASSES]].to_numpy(),
                               want, atol=2e-5)

    # the Python API: a frame of picture bytes
    np.testing.assert_allclose(model.predict(pd.DataFrame({"image": data[:3]}))[[f"prob_{c}" for c in CLASSES]]
                               .to_numpy(), want[:3], atol=2e-5)


def test_batch_predict_names_the_missing_or_broken_picture_and_its_row(picture_model, tmp_path, monkeypatch):
    from weakflow.tasks import batch_predict
    from weakflow.tasks.batch_predict import load_scoring_model, score_file

    monkeypatch.setattr(batch_predict, "PICTURE_SLICE_BYTES", SIZE * SIZE)  # one picture per slice

    _, uri = picture_model
    mlflow.set_tracking_uri(uri)
    model = load_scoring_model("pics", "1")
    write_pictures(tmp_path, 8)
    (tmp_path / "pics" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = [f"pics/p{i}.png" for i in range(8)]
    for bad, why in (("pics/gone.png", "does not exist"), ("pics/broken.png", "is not a picture")):
        frame = pd.DataFrame({"image": paths[:6] + [bad] + paths[6:]})  # row 6 of the file
        frame.to_csv(tmp_path / "score.csv", index=False)
        with pytest.raises(DataError) as err:
            score_file(model, tmp_path / "score.csv", tmp_path / "out.csv", chunk_rows=4)  # 2nd chunk, 3rd slice
        message = str(err.value)
        assert "\n" not in message
        assert "column 'image' row(s) [6]" in message, message
        assert str(tmp_path / bad) in message and why in message, message
        assert not (tmp_path / "out.csv").exists()
    pd.DataFrame({"image": paths[:2] + [None]}).to_parquet(tmp_path / "empty.parquet", index=False)
    with pytest.raises(DataError, match=r"column 'image' row\(s\) \[2\].*an empty cell"):
        score_file(model, tmp_path / "empty.parquet", tmp_path / "out.csv", image_root=tmp_path)
    pd.DataFrame({"image": [1.5, 2.5]}).to_parquet(tmp_path / "numbers.parquet", index=False)
    with pytest.raises(DataError, match=r"column 'image': expected picture file paths .* found type double"):
        score_file(model, tmp_path / "numbers.parquet", tmp_path / "out.csv")


def test_signature_says_the_picture_column_is_binary(registry):
    """The registered signature types the picture column binary, so MLflow's own scoring server takes the
    picture as base64 in ``dataframe_records`` and hands the model its bytes."""
    from mlflow.models import infer_signature
    from mlflow.pyfunc.scoring_server import infer_and_parse_data
    from mlflow.types.schema import DataType

    from weakflow.deploy.model_code import picture_signature

    uri, weights = registry
    mlflow.set_tracking_uri(uri)
    example = pd.DataFrame({"size_cm": [1.0, 2.0], "image": ["a.png", "b.png"]})  # training rows carry paths
    signature = picture_signature(infer_signature(example, pd.DataFrame({"prediction": ["bag", "coat"]})), ["image"])
    types = {c.name: c.type for c in signature.inputs.inputs}
    assert types == {"size_cm": DataType.double, "image": DataType.binary}
    plain = infer_signature(example[["size_cm"]])
    assert picture_signature(plain, []) is plain

    with mlflow.start_run(run_name="signed"):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(ENTRY), signature=signature,
                                       artifacts={"weights": str(weights["mixed"])}, pip_requirements=[])
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    sent = picture(30, colour=True)
    body = {"dataframe_records": [{"size_cm": 2.0, "image": b64(sent)}]}
    frame = infer_and_parse_data(body, pyfunc.metadata.get_input_schema())  # what `mlflow models serve` does
    assert frame["image"].tolist() == [sent]
    want = load_weights(weights["mixed"]).predict_proba(pd.DataFrame({"size_cm": [2.0], "image": [sent]}))
    np.testing.assert_allclose(pyfunc.predict(frame)[[f"prob_{c}" for c in CLASSES]].to_numpy(), want, atol=2e-5)


def test_numbers_beside_a_picture_are_served_and_scored(registry, tmp_path):
    from fastapi.testclient import TestClient

    from weakflow.deploy.serve import create_app
    from weakflow.tasks.batch_predict import load_scoring_model, score_file

    uri, weights = registry
    mlflow.set_tracking_uri(uri)
    sent = [picture(20, colour=True), picture(21, (30, 18))]  # a grey picture is read as colour too
    frame = pd.DataFrame({"size_cm": [3.5, 40.0], "image": sent})
    want = load_weights(weights["mixed"]).predict_proba(frame)
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    app = create_app("mixed", poll_seconds=0, log_url=log_url)
    with TestClient(app) as http:
        r = http.post("/predict", json={"records": [{"size_cm": 3.5, "image": b64(sent[0])},
                                                    {"size_cm": 40.0, "image": b64(sent[1])}]})
        assert r.status_code == 200, r.text
        got = np.array([[p["probabilities"][c] for c in CLASSES] for p in r.json()["predictions"]])
        np.testing.assert_allclose(got, want, atol=2e-5)
        r = http.post("/predict", json={"records": [{"size_cm": 3.5}]})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "records[0].image", r.text
        rows = logged(app, log_url)
    assert [row["size_cm"] for row in rows] == [3.5, 40.0]
    assert set(rows[0]) == {"size_cm", *logged_names("image"), *embedding_names("image", 16)}
    assert rows[0]["image:colourfulness"] > 0 and rows[1]["image:colourfulness"] == 0

    (tmp_path / "pics").mkdir()
    for i, data in enumerate(sent):
        (tmp_path / "pics" / f"{i}.png").write_bytes(data)
    pd.DataFrame({"image": ["0.png", "1.png"], "size_cm": [3.5, 40.0], "row_id": [7, 9]}).to_csv(tmp_path / "in.csv",
                                                                                               index=False)
    model = load_scoring_model("mixed", "1")
    assert model.inputs == ["size_cm", "image"]
    score_file(model, tmp_path / "in.csv", tmp_path / "out.csv", image_root=tmp_path / "pics")
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["row_id"].tolist() == [7, 9]
    np.testing.assert_allclose(out[[f"prob_{c}" for c in CLASSES]].to_numpy(), want, atol=2e-5)
    pd.DataFrame({"image": ["0.png"], "size_cm": [float("inf")]}).to_csv(tmp_path / "inf.csv", index=False)
    with pytest.raises(DataError, match=r"column 'size_cm' row\(s\) \[0\]"):  # the numbers' rules still hold
        score_file(model, tmp_path / "inf.csv", tmp_path / "out2.csv", image_root=tmp_path / "pics")


def test_the_server_folds_batch_norm_without_changing_the_answers():
    from weakflow.deploy.serve import fold_batch_norm

    torch.manual_seed(1)
    model = build_model(ModelSpec(kind="resnet", num_features=2 + 3 * 40 * 40, num_classes=4, hidden=(16,),
                                  image_shape=(3, 40, 40)))  # side features, a strided stem, strided shortcuts
    for m in model.modules():  # batch norm that does something
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the loaded model is left alone
    x = torch.rand(6, 2 + 3 * 40 * 40)  # logits far from saturation
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(folded(x), 1).numpy(), torch.softmax(model(x), 1).numpy(), atol=1e-5)
    mlp = build_model(ModelSpec(kind="mlp", num_features=4, num_classes=2))
    assert fold_batch_norm(mlp) is mlp


@pytest.mark.parametrize("ensemble", [1, 3])
def test_one_forward_pass_gives_the_probabilities_and_the_picture_embedding(ensemble):
    from weakflow.tasks.core.picture_stats import predict_with_embedding

    torch.manual_seed(2)
    model = build_model(ModelSpec(kind="resnet", num_features=2 + SIZE * SIZE, num_classes=3, hidden=(16,),
                                  image_shape=(1, SIZE, SIZE), ensemble=ensemble, temperature=2.5)).eval()
    x = np.random.default_rng(0).uniform(0, 1, (5, 2 + SIZE * SIZE)).astype(np.float32)  # logits far from saturation
    probs, embedding = predict_with_embedding(model, x)
    first = model.members[0] if ensemble > 1 else model
    with torch.no_grad():
        np.testing.assert_allclose(probs, torch.softmax(model(torch.from_numpy(x)), 1).numpy(), atol=1e-6)
        np.testing.assert_allclose(embedding, first.features(torch.from_numpy(x))[:, :16].numpy(), atol=1e-5)
    assert embedding.shape == (5, 16)  # the side features are not part of it
    mlp = build_model(ModelSpec(kind="mlp", num_features=4, num_classes=2)).eval()
    assert predict_with_embedding(mlp, np.zeros((2, 4), np.float32))[1] is None
