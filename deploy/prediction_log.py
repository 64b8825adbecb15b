"""The prediction log: every served prediction, written off the request path.

Requests put rows on an in-memory queue and return; one writer thread inserts them in batches through
SQLAlchemy (SQLite by default, any SQLAlchemy URL such as PostgreSQL by configuration). ``close()``
drains the queue before it returns, and the server calls it on shutdown (SIGTERM included), so no
answered prediction goes unlogged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime, timezone

import orjson
import sqlalchemy as sa

log = logging.getLogger("weakflow.serve")

METADATA = sa.MetaData()
PREDICTIONS = sa.Table(
    "predictions", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("row_index", sa.Integer, nullable=False),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False, index=True),
    sa.Column("features", sa.Text, nullable=False),  # JSON object: feature -> value
    sa.Column("predicted_class", sa.String(256), nullable=False),  # a class value: an integer or a name
    sa.Column("confidence", sa.Float, nullable=False),
)

FEEDBACK = sa.Table(  # delayed gold labels for served rows (`weakflow feedback`)
    "feedback", METADATA,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("row_index", sa.Integer, primary_key=True),
    sa.Column("label", sa.String(256), nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
)
ALERTS = sa.Table(  # one row per drift detection (`weakflow alerts`)
    "alerts", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("drift_share", sa.Float),
    sa.Column("drifted_columns", sa.Text),  # JSON list
    sa.Column("prediction_drifted", sa.Boolean),
    sa.Column("report_uri", sa.Text),
    sa.Column("webhook", sa.String(256)),  # "sent", "failed: ...", or "" when none is configured
    sa.Column("message", sa.Text),
)

_STOP = object()


def make_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url, future=True)
    if url.startswith("sqlite"):
        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn, _record) -> None:  # readers (monitoring) never block the writer
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")
    METADATA.create_all(engine)
    return engine


class PredictionLog:
    def __init__(self, url: str, batch_size: int = 1000, retries: int = 5, backoff: float = 0.5) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.batch_size, self.retries, self.backoff = batch_size, retries, backoff
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.written = 0
        self.failed = 0
        self.last_error: str | None = None  # the latest write's failure; None once a write succeeds again
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def put(self, request_id: str, model_name: str, model_version: str, features: list[str], rows: list[dict],
            classes: list[int], confidence: list[float]) -> None:
        """Queue one request's rows; never blocks on disk. Only a tuple is queued here: the rows are built
        and encoded on the writer thread, off the request path."""
        self.queue.put((datetime.now(timezone.utc), request_id, model_name, model_version, features, rows, classes,
                        confidence))

    @staticmethod
    def _rows(item: tuple) -> list[dict]:
        ts, request_id, model_name, model_version, features, rows, classes, confidence = item
        return [{"ts": ts, "request_id": request_id, "row_index": i, "model_name": model_name,
                 "model_version": model_version, "features": orjson.dumps({f: r[f] for f in features}).decode(),
                 "predicted_class": str(c), "confidence": float(p)}
                for i, (r, c, p) in enumerate(zip(rows, classes, confidence))]

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self.queue.get()
            pending: list[dict] = []
            barriers: list[threading.Event] = []
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    barriers.append(item)
                else:
                    try:
                        pending.extend(self._rows(item))
                    except Exception as exc:  # noqa: BLE001 - a malformed item must not stop the writer
                        self.failed += len(item[5])
                        log.error("prediction log dropped request %s: %s", item[1], exc)
                if stop or len(pending) >= self.batch_size:
                    break
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
            if pending:
                self._write(pending)
            for barrier in barriers:  # everything queued before the barrier is now written (or counted failed)
                barrier.set()

    def _write(self, rows: list[dict]) -> None:
        """Insert one batch; retried with back-off (a database restart, SQLite busy). Never raises: a
        writer thread that died would silently stop the whole log."""
        for attempt in range(self.retries):
            try:
                with self.engine.begin() as conn:
                    conn.execute(PREDICTIONS.insert(), rows)
                self.written += len(rows)
                self.last_error = None
                return
            except Exception as exc:  # noqa: BLE001 - any failure is counted, logged and retried
                self.last_error = f"attempt {attempt + 1}/{self.retries}: {type(exc).__name__}: {str(exc)[:200]}"
                log.warning("prediction log write failed (attempt %d/%d): %s", attempt + 1, self.retries, exc)
                if attempt + 1 < self.retries:
                    time.sleep(min(self.backoff * 2 ** attempt, 10.0))
        self.failed += len(rows)
        log.error("prediction log dropped %d rows after %d attempts", len(rows), self.retries)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until every row queued before this call is written (or counted failed); False on timeout."""
        if not self._thread.is_alive():
            return False
        barrier = threading.Event()
        self.queue.put(barrier)
        return barrier.wait(timeout)

    def stats(self) -> dict[str, int | bool | str | None]:
        return {"written": self.written, "failed": self.failed, "queued": self.queue.qsize(), "writer_alive": self.alive,
                "last_error": self.last_error}

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued so far, then stop the writer."""
        if self._thread.is_alive():
            self.queue.put(_STOP)
            self._thread.join(timeout)
        left = self.queue.qsize()
        if left or self._thread.is_alive():
            log.error("prediction log closed with %d batch(es) still queued (writer %s)", left,
                      "still running" if self._thread.is_alive() else "stopped")
        self.engine.dispose()


def wait_logged(url: str, keys: list[tuple[str, int]], timeout: float = 30.0, poll: float = 0.1) -> list[tuple[str, int]]:
    """Wait until every ``(request_id, row_index)`` is in the log (the server writes off the request path,
    so a 200 arrives before its rows are committed). Returns the keys still missing at ``timeout``."""
    engine = make_engine(url)
    ids = sorted({r for r, _ in keys})
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                found = {(r, int(i)) for r, i in conn.execute(
                    sa.select(PREDICTIONS.c.request_id, PREDICTIONS.c.row_index).where(PREDICTIONS.c.request_id.in_(ids)))}
            missing = [k for k in keys if k not in found]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(poll)
    finally:
        engine.dispose()


def count_rows(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(PREDICTIONS)).scalar_one())
    finally:
        engine.dispose()
