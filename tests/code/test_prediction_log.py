"""The prediction log's writer against a real SQLite file that another connection keeps locked: failed
writes are retried with back-off and land once the lock goes; when every retry is spent the rows are
counted failed and the writer carries on. (A lock, not chmod: the tests may run as root.)"""

from __future__ import annotations

import sqlite3
import time

import pytest

from weakflow.deploy.prediction_log import PredictionLog, count_rows

FEATURES = ["a", "b"]


def put(log: PredictionLog, request_id: str, n: int) -> None:
    log.put(request_id, "m", "1", FEATURES, [{"a": float(i), "b": 1.0} for i in range(n)], [0] * n, [0.9] * n)


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "log.db"
    # SQLite's busy timeout of 50 ms: a locked file fails an attempt at once, not after the default 5 s
    return path, f"sqlite:///{path}?timeout=0.05"


class Locked:
    """SQLite's write lock held by another connection (``BEGIN EXCLUSIVE``) until ``release``."""

    def __init__(self, path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self.conn is not None:
            self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


def test_rows_land_after_the_lock_goes(db):
    path, url = db
    log = PredictionLog(url, retries=5, backoff=0.2)  # waits 0.2, 0.4, 0.8, 1.6 s between attempts
    lock = Locked(path)
    try:
        put(log, "r1", 3)
        put(log, "r2", 2)
        deadline = time.monotonic() + 30
        while log.last_error is None:  # the first attempt has failed: the batch is being retried
            assert time.monotonic() < deadline, "the writer never tried to write"
            time.sleep(0.01)
        assert "database is locked" in log.last_error and log.written == 0
    finally:
        lock.release()
    assert log.flush(30)
    assert (log.written, log.failed, log.last_error) == (5, 0, None)
    assert count_rows(url) == 5
    log.close()


def test_the_writer_survives_exhausted_retries_and_counts_the_lost_rows(db):
    path, url = db
    log = PredictionLog(url, retries=3, backoff=0.01)
    lock = Locked(path)
    try:
        put(log, "lost", 4)
        assert log.flush(30)  # three attempts, all refused: the batch is given up, the barrier passes
        stats = log.stats()
        assert (stats["written"], stats["failed"], stats["writer_alive"]) == (0, 4, True)
        assert stats["last_error"].startswith("attempt 3/3: OperationalError")
        assert "database is locked" in stats["last_error"]
    finally:
        lock.release()
    put(log, "kept", 2)  # the same writer thread goes on writing once the file is free
    assert log.flush(30)
    assert log.stats() == {"written": 2, "failed": 4, "queued": 0, "writer_alive": True, "last_error": None}
    assert count_rows(url) == 2
    log.close()
    assert not log.alive
