"""``weakflow serve``: the model behind the ``champion`` alias over HTTP (FastAPI + uvicorn).

- ``POST /predict`` ``{"records": [{feature: number, ...}, ...]}`` -> class, confidence and
  probabilities per record, the model version that answered and a request id. Every record is checked
  against the served model's feature schema (missing/extra fields, non-numbers, NaN/inf -> 422 naming
  the field; at most the first 20 errors, with ``error_count``); bodies over ``serve.max_body_bytes`` -> 413;
  more than ``serve.max_batch`` records -> 422; a content type other than ``application/json`` (a browser
  form can post ``text/plain`` cross-site without a CORS preflight) -> 415; a body not complete within
  ``serve.body_timeout_seconds`` -> 408 (an answer sent before the whole body was read closes the connection).
- Every request's head (request line and headers), which the app never sees: not complete within
  ``serve.header_timeout_seconds`` -> 408 and closed; over ``serve.max_header_bytes`` -> 431 and closed
  (:mod:`deploy.http_limits`: the protocol class in ``app.http_protocol``, for ``uvicorn.run(http=...)``).
- A model that takes a picture: each record carries it in the picture column as base64 text (the bytes of a
  PNG, JPEG, WebP, BMP or TIFF file, as MLflow's scoring server takes binary columns; a ``data:image/...;base64,``
  prefix is allowed), never a path (a path is not base64, and the server reads no file it is sent). Not
  base64, over ``serve.max_image_bytes`` bytes, over the model's pixel limit (``data.image_max_pixels``) or
  not decoding -> 422 naming ``records[i].<column>``. The prediction log keeps the picture's SHA-256, its byte
  size, its descriptors (:mod:`tasks.core.picture_stats`: size, brightness, contrast, sharpness, colour) and
  the network's picture embedding (from the same forward pass), never its bytes.
- ``GET /health``, ``GET /model``.
- Hot reload: a thread polls the registry every ``serve.poll_seconds``; when the alias moves, the new
  version is loaded next to the old one and swapped in with one reference assignment, so requests in
  flight finish on the version they started with (and say so).
- Every answered record goes to the prediction log (:mod:`deploy.prediction_log`), off the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from typing import Annotated, Any

import numpy as np
import orjson
import pandas as pd
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from weakflow.deploy.batching import MicroBatcher
from weakflow.deploy.inputs import as_float32, picture_bytes
from weakflow.deploy.prediction_log import PredictionLog
from weakflow.deploy.registry import CHAMPION
from weakflow.tasks.core.picture_stats import embedding_names, picture_record, picture_size, predict_with_embedding
from weakflow.tasks.core.images import ImageFeaturizer
from weakflow.tasks.lib.data import InputSchema

log = logging.getLogger("weakflow.serve")
MAX_ERRORS = 20  # a 422 lists at most this many field errors (and says how many there were)
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


LOGGED_TEXT_CHARS = 200  # text kept in the prediction log per field (the drift check reads the text features)
MAX_IMAGE_BYTES = 4 << 20  # serve.max_image_bytes' default
INLINE_PICTURE_CHARS = 256 * 1024  # a request's pictures larger than this are decoded off the event loop


@dataclass(frozen=True)
class TextFeatures:
    """A model's text featurisation in the micro-batcher's shape: ``predict`` takes an object array of texts
    (one column per text input) and returns their features, so the texts of every request in an event-loop
    turn go through the featuriser (for the pretrained encoder: one forward pass per 32 texts) together."""

    schema: InputSchema

    def predict(self, texts: np.ndarray) -> np.ndarray:
        return self.schema.featurizer.transform(pd.DataFrame(texts, columns=self.schema.text))


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    run_id: str
    model: torch.nn.Module
    features: list[str]  # the raw input fields a record carries (numbers, then text)
    classes: list
    loaded_at: str
    body: TypeAdapter  # validates a whole request body against this model's input schema
    schema: InputSchema | None = None  # None: numbers only (every model registered before text inputs)

    @cached_property
    def text_features(self) -> TextFeatures | None:
        """This version's text featurisation for the micro-batcher (one object per version: its batches
        never mix versions); None without text."""
        return TextFeatures(self.schema) if self.schema is not None and self.schema.featurizer is not None else None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities, one row per row of ``x``; for a picture network the picture embedding follows in
        the same rows (columns after the classes: the micro-batcher splits rows, not columns)."""
        if self.images is not None:
            probs, embedding = predict_with_embedding(self.model, x)
            return probs if embedding is None else np.hstack([probs, embedding])
        with torch.inference_mode():
            return torch.softmax(self.model(torch.from_numpy(x)).float(), dim=1).numpy()

    @property
    def numeric(self) -> list[str]:
        return self.schema.numeric if self.schema is not None else self.features

    @property
    def images(self) -> ImageFeaturizer | None:
        """The picture column's featurizer (None: no picture; models saved before pictures have no such field)."""
        return getattr(self.schema, "images", None)

    @property
    def image_columns(self) -> list[str]:
        return [self.images.column] if self.images is not None else []

    def log_rows(self, records: list[dict], x: np.ndarray,
                 pictures: list[dict] | None = None) -> tuple[list[str], list[dict]]:
        """What the prediction log keeps per record: the numbers; for text, the first LOGGED_TEXT_CHARS
        characters and the model's text features (what the drift check compares); for a picture, its hash,
        byte size and descriptors (``pictures``, from :func:`tasks.core.picture_stats.picture_record`), not
        its bytes, and the network's picture embedding (added by :meth:`ModelServer.answer`). So a row's size
        is bounded whatever the client sends."""
        if self.schema is None or not (self.schema.text or self.images is not None):
            return self.features, records
        fields = [f for f in self.features if f not in self.image_columns]
        rows = records
        if self.schema.text:
            names = self.schema.featurizer.names
            start = len(self.schema.numeric)
            rows = [{**r, **{t: r[t][:LOGGED_TEXT_CHARS] for t in self.schema.text},
                     **dict(zip(names, map(float, row[start:start + len(names)])))} for r, row in zip(rows, x)]
            fields += names
        if self.images is not None and pictures is not None:
            rows = [{**r, **p} for r, p in zip(rows, pictures)]
            fields += [k for k in pictures[0] if k not in fields] if pictures else []  # hash, size, descriptors...
        return fields, rows


def body_adapter(features: list[str], max_batch: int, text: list[str] | None = None,
                 max_text_chars: int = 5000, images: list[str] | None = None) -> TypeAdapter:
    """The request body's schema: numbers, text of at most ``max_text_chars`` characters, and for ``images``
    a string (base64, checked and decoded by :func:`read_pictures`)."""
    Text = Annotated[str, StringConstraints(max_length=max_text_chars)]
    Picture = Annotated[str, Field(strict=True)]
    fields = {f: (Text if f in (text or []) else Picture if f in (images or []) else Number) for f in features}
    record = TypedDict("Record", fields)  # type: ignore[misc]
    record.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    body = TypedDict("PredictRequest", {"records": Annotated[list[record], Field(min_length=1, max_length=max_batch)]})  # type: ignore[misc,valid-type]
    body.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return TypeAdapter(body)


def load_version(name: str, version: str, max_batch: int, max_text_chars: int = 5000) -> ServedModel:
    import mlflow

    from weakflow.deploy.model_code import load_pyfunc

    pyfunc = load_pyfunc(f"models:/{name}/{version}")
    inner = pyfunc.unwrap_python_model()
    mv = mlflow.MlflowClient().get_model_version(name, version)
    model = fold_batch_norm(inner.model.eval())
    schema = getattr(getattr(inner, "loaded", None), "schema", None)  # models saved before text inputs: none
    text = schema.text if schema is not None else []
    images = [schema.images.column] if getattr(schema, "images", None) is not None else []
    return ServedModel(name, str(version), mv.run_id, model, list(inner.features), list(inner.classes),
                       datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       body_adapter(inner.features, max_batch, text, max_text_chars, images), schema)


def fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """A picture network with each batch norm folded into the convolution before it (an eval-mode identity
    up to float rounding, about 1e-7 in the probabilities): a fifth less time per forward pass, the largest
    cost of a picture request. Other networks are returned as they are."""
    if not any(type(m).__name__ == "PictureNet" for m in model.modules()):  # a snapshot ensemble of them too
        return model
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    out = copy.deepcopy(model).eval()
    for module in out.modules():
        for conv, norm in (("conv1", "bn1"), ("conv2", "bn2")):  # a residual block's two convolutions
            if isinstance(getattr(module, conv, None), torch.nn.Conv2d) and isinstance(getattr(module, norm, None),
                                                                                      torch.nn.BatchNorm2d):
                setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, norm)))
                setattr(module, norm, torch.nn.Identity())
        if isinstance(module, torch.nn.Sequential):  # the stem and the strided shortcuts: conv, then norm
            for i in range(len(module) - 1):
                if isinstance(module[i], torch.nn.Conv2d) and isinstance(module[i + 1], torch.nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = torch.nn.Identity()
    return out


def read_pictures(records: list[dict], column: str, fmt: Any,
                  max_bytes: int) -> tuple[np.ndarray | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """Each record's picture (base64 text) as ``fmt.shape`` uint8: ``(pixels, what the log keeps per record,
    [])``, or ``(None, [], the 422's field errors)``. Content is checked by decoding it (the model's pixel
    limit, ``fmt.max_pixels``, and Pillow's decompression-bomb limit hold); nothing is read from disk."""
    from weakflow.tasks.core.images import ImageProblem, decode

    pixels = np.empty((len(records), *fmt.shape), np.uint8)
    logged: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        field = f"records[{i}].{column}"
        try:
            data = picture_bytes(record[column], max_bytes)
        except ValueError as exc:
            errors.append({"field": field, "type": "picture_encoding", "message": f"expected {exc}"})
            continue
        try:
            pixels[i] = decode(data, fmt)
        except ImageProblem as exc:
            errors.append({"field": field, "type": "picture", "message": f"the picture sent {exc}"})
            continue
        if not errors:  # the log rows are needed only when every picture is good
            logged.append(picture_record(column, data, pixels[i], *picture_size(data)))
    return (None, [], errors) if errors else (pixels, logged, [])


class ModelHolder:
    """The served model and the poller that swaps it when the alias moves."""

    def __init__(self, name: str, alias: str, max_batch: int, poll_seconds: float, max_text_chars: int = 5000) -> None:
        import mlflow

        self.name, self.alias, self.max_batch, self.poll_seconds = name, alias, max_batch, poll_seconds
        self.max_text_chars = max_text_chars
        self.client = mlflow.MlflowClient()
        self.current = load_version(name, self._alias_version(), max_batch, max_text_chars)
        self.reloads = 0
        self.last_poll_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="registry-poller", daemon=True)

    def _alias_version(self) -> str:
        return str(self.client.get_model_version_by_alias(self.name, self.alias).version)

    def start(self) -> None:
        if self.poll_seconds > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        """Load and swap in the alias's version if it moved; True when it did."""
        version = self._alias_version()
        if version == self.current.version:
            return False
        fresh = load_version(self.name, version, self.max_batch, self.max_text_chars)
        previous, self.current = self.current, fresh  # one assignment: requests see old or new, never half
        self.reloads += 1
        log.warning("model %s@%s moved: serving v%s (was v%s)", self.name, self.alias, fresh.version, previous.version)
        return True

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check()
                self.last_poll_error = None
            except Exception as exc:  # registry down or a broken version: keep serving what we have
                self.last_poll_error = f"{type(exc).__name__}: {exc}"
                log.error("registry poll failed, still serving v%s: %s", self.current.version, self.last_poll_error)


def is_json(content_type: bytes | None) -> bool:
    """``application/json``, parameters (``; charset=utf-8``) and case aside."""
    return content_type is not None and content_type.split(b";", 1)[0].strip().lower() == b"application/json"


async def read_body(receive, body: bytearray, limit: int) -> bool | None:  # noqa: ANN001 - ASGI
    """Read the request body into ``body``: True when complete, False past ``limit`` bytes, None when the
    client disconnected."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            return False
        if not message.get("more_body", False):
            return True


def refused(errors: list[dict[str, Any]], total: int, request_id: str, version: str) -> tuple[int, dict[str, Any]]:
    """A 422 listing at most :data:`MAX_ERRORS` field errors, with the total: 64,000 bad fields must not
    make a 6 MB answer."""
    payload: dict[str, Any] = {"detail": errors[:MAX_ERRORS], "error_count": total, "request_id": request_id,
                               "model_version": version}
    if total > MAX_ERRORS:
        payload["note"] = f"showing the first {MAX_ERRORS} of {total} errors"
    return 422, payload


def error_fields(exc: ValidationError, limit: int | None = None) -> list[dict[str, Any]]:
    """Pydantic errors as ``{"field": "records[3].px_5", "message": ..., "type": ...}`` (the first ``limit``)."""
    out = []
    for err in exc.errors(include_url=False, include_input=False)[:limit]:
        field = ""
        for part in err["loc"]:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        out.append({"field": field or "body", "message": err["msg"], "type": err["type"]})
    return out


class ModelServer(FastAPI):
    """FastAPI for every route, except that ``POST /predict`` is answered by a lean ASGI handler ahead
    of FastAPI's routing and middleware stack: on a one-record request that machinery cost more CPU than
    validating and predicting (see docs/benchmarks.md). The route is still declared to FastAPI, so it is
    in the OpenAPI schema, and both paths run the same :meth:`answer`."""

    predict_path = "/predict"
    http_protocol: type | None = None  # uvicorn's HTTP protocol bounding each request's head (create_app sets it)

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.predict_path:
            await self.predict_asgi(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def predict_asgi(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        request_id = uuid.uuid4().hex
        state = self.state.weakflow
        read_all = False  # a response sent before the whole body was read closes the connection
        try:
            content_type = next((v for k, v in scope["headers"] if k == b"content-type"), None)
            declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            limit = state["max_body_bytes"]
            if not is_json(content_type):  # a cross-site form (text/plain, no preflight) never reaches the model
                got = repr(content_type.decode("latin-1")) if content_type is not None else "none"
                status, payload = 415, {"detail": f"POST {self.predict_path} needs the header Content-Type: "
                                                  f"application/json (got {got})", "request_id": request_id}
            elif declared is not None and declared.isdigit() and int(declared) > limit:
                status, payload = 413, {"detail": f"request body of {declared.decode()} bytes exceeds the limit of "
                                                  f"{limit}", "request_id": request_id}
            else:
                body = bytearray()
                timeout = state["body_timeout_s"]
                try:
                    async with asyncio.timeout(timeout):  # a stalled body must not hold the request forever
                        complete = await read_body(receive, body, limit)
                except TimeoutError:
                    said = f" of the {declared.decode()} declared" if declared is not None else ""
                    status, payload = 408, {"detail": f"request body not complete within {timeout:g} s "
                                                      f"(serve.body_timeout_seconds): got {len(body)} bytes{said}",
                                            "request_id": request_id}
                else:
                    if complete is None:
                        return  # the client left: nothing answered, nothing logged
                    if not complete:
                        status, payload = 413, {"detail": f"request body exceeds the limit of {limit} bytes",
                                                "request_id": request_id}
                    else:
                        read_all = True
                        status, payload = await self.answer(bytes(body), request_id)
        except Exception as exc:  # noqa: BLE001 - a bad request never takes the server down
            log.exception("predict failed (request %s)", request_id)
            status, payload = 500, {"detail": f"internal error: {type(exc).__name__}", "request_id": request_id}
        out = orjson.dumps(payload)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
        if not read_all:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    async def answer(self, body: bytes, request_id: str) -> tuple[int, dict[str, Any]]:
        """Validate, predict (micro-batched with the requests of this event-loop turn), queue the log rows."""
        state = self.state.weakflow
        served: ServedModel = state["holder"].current  # this request's version, whatever reloads meanwhile
        try:
            records = served.body.validate_json(body)["records"]
        except ValidationError as exc:
            return refused(error_fields(exc, MAX_ERRORS), exc.error_count(), request_id, served.version)
        numeric = served.numeric
        # deploy.inputs: the value rule `weakflow predict` and the Python API apply too (finite as float32)
        x, nonfinite = as_float32([[r[f] for f in numeric] for r in records])
        x, nonfinite = x.reshape(len(records), len(numeric)), nonfinite.reshape(len(records), len(numeric))
        if nonfinite.any():  # finite as JSON, yet beyond float32 (e.g. 1e39): the model cannot take it
            rows, cols = np.nonzero(nonfinite)
            bad = [{"field": f"records[{i}].{numeric[j]}", "type": "float32_range",
                    "message": f"value {records[i][numeric[j]]!r} is outside the float32 range"}
                   for i, j in zip(rows[:MAX_ERRORS], cols[:MAX_ERRORS])]
            return refused(bad, len(rows), request_id, served.version)
        if served.text_features is not None:  # raw text -> its features, with the turn's other requests' texts
            texts = np.array([[r[t] for t in served.schema.text] for r in records], dtype=object)
            x = np.hstack([x, await state["batcher"](served.text_features, texts)])
        logged = None
        if served.images is not None:  # base64 -> checked pixels, last
            column, limit = served.images.column, state.get("max_image_bytes", MAX_IMAGE_BYTES)
            args = (records, column, served.images.fmt, limit)
            sent = sum(len(r[column]) for r in records)
            pixels, logged, bad = (await asyncio.to_thread(read_pictures, *args) if sent > INLINE_PICTURE_CHARS
                                   else read_pictures(*args))
            if pixels is None:
                return refused(bad[:MAX_ERRORS], len(bad), request_id, served.version)
            flat = pixels.reshape(len(records), -1).astype(np.float32)
            x = np.hstack([x, flat]) if x.shape[1] else flat
        out = await state["batcher"](served, x)
        probs = out[:, :len(served.classes)].astype(np.float64).round(6)  # what the client sees is logged
        if logged is not None and out.shape[1] > len(served.classes):  # a picture network's embedding, logged
            names = embedding_names(served.images.column, out.shape[1] - len(served.classes))
            for row, values in zip(logged, out[:, len(served.classes):].round(5).tolist()):
                row.update(zip(names, values))
        top = probs.argmax(axis=1)
        classes = [served.classes[i] for i in top]
        confidence = probs[np.arange(len(top)), top].tolist()
        keys = [str(c) for c in served.classes]
        payload = {"request_id": request_id, "model": served.name, "model_version": served.version,
                   "predictions": [{"class": c, "confidence": p, "probabilities": dict(zip(keys, row))}
                                   for c, p, row in zip(classes, confidence, probs.tolist())]}
        fields, rows = served.log_rows(records, x, logged)
        state["log"].put(request_id, served.name, served.version, fields, rows, classes, confidence)
        return 200, payload


def create_app(name: str, alias: str = CHAMPION, max_body_bytes: int = 1 << 20, max_batch: int = 1000,
               poll_seconds: float = 10.0, log_url: str = "sqlite:///predictions.db",
               body_timeout_s: float = 30.0, max_text_chars: int = 5000, header_timeout_s: float = 10.0,
               max_header_bytes: int = 16 * 1024, max_image_bytes: int = MAX_IMAGE_BYTES) -> ModelServer:
    """The app; the model and the prediction log open in its lifespan (so tests run it in process).
    ``body_timeout_s``: a ``/predict`` body not complete within this many seconds gets 408; a text field
    longer than ``max_text_chars`` gets 422. ``header_timeout_s`` and ``max_header_bytes`` bound a request's
    head, before the app is called: they live in ``app.http_protocol``, which the server must be run with
    (``uvicorn.run(app, http=app.http_protocol)``). ``max_image_bytes``: a picture larger than this (once
    decoded from base64) gets 422."""
    from weakflow.deploy.http_limits import bounded_protocol

    state: dict[str, Any] = {"max_body_bytes": max_body_bytes, "body_timeout_s": body_timeout_s,
                             "max_image_bytes": max_image_bytes}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(1)  # many small requests: one thread each beats oversubscribed intra-op threads
        state["holder"] = ModelHolder(name, alias, max_batch, poll_seconds, max_text_chars)
        state["log"] = PredictionLog(log_url)
        state["batcher"] = MicroBatcher()
        state["holder"].start()
        state["started"] = time.time()
        try:
            yield
        finally:  # uvicorn runs this on SIGTERM/SIGINT too: flush every queued prediction
            state["holder"].stop()
            state["log"].close()
            log.warning("prediction log closed: %d rows written, %d failed", state["log"].written, state["log"].failed)

    app = ModelServer(title="weakflow model server", lifespan=lifespan)
    app.state.weakflow = state
    app.http_protocol = bounded_protocol(header_timeout_s, max_header_bytes)  # uvicorn.run(app, http=...)

    @app.get("/health")
    def health() -> dict[str, Any]:
        holder: ModelHolder = state["holder"]
        stats = state["log"].stats()
        batcher: MicroBatcher = state["batcher"]
        status = ("degraded: prediction log writer stopped" if not stats["writer_alive"] else
                  f"degraded: prediction log writes failing ({stats['last_error']})" if stats["last_error"] else "ok")
        return {"status": status,
                "model": holder.name, "model_version": holder.current.version,
                "uptime_s": round(time.time() - state["started"], 1), "last_poll_error": holder.last_poll_error,
                "prediction_log": stats, "forward_passes": batcher.batches, "rows_predicted": batcher.rows}

    @app.get("/model")
    def model_info() -> dict[str, Any]:
        holder: ModelHolder = state["holder"]
        m = holder.current
        return {"name": m.name, "alias": holder.alias, "version": m.version, "run_id": m.run_id,
                "features": m.features, "classes": m.classes, "loaded_at": m.loaded_at, "reloads": holder.reloads,
                "max_batch": max_batch, "max_body_bytes": max_body_bytes, "poll_seconds": poll_seconds,
                "body_timeout_s": body_timeout_s, "max_text_chars": max_text_chars,
                "header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes,
                "text_features": holder.current.schema.text if holder.current.schema is not None else [],
                "image_columns": m.image_columns, "max_image_bytes": max_image_bytes,
                "image_format": m.images.state() if m.images is not None else None}

    @app.post(ModelServer.predict_path)
    async def predict(request: Request) -> Response:
        """``{"records": [{feature: number, ...}, ...]}`` -> class, confidence and probabilities per record
        (a text field: a string; a picture field: the picture file's bytes as base64 text). (Served by
        :meth:`ModelServer.predict_asgi`; this declaration documents it in the OpenAPI schema.)"""
        status, payload = await app.answer(await request.body(), uuid.uuid4().hex)
        return Response(orjson.dumps(payload), status_code=status, media_type="application/json")

    return app
