"""The real model server (uvicorn on a free port, a tiny real registered model) against hostile or broken
input: a non-JSON content type, a request with tens of thousands of bad fields, a body that never
completes, headers that never complete or never end; and its prediction log while the SQLite file is
locked by another connection."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from weakflow.deploy.prediction_log import count_rows
from tests.conftest import free_port
from tests.tiny_model import FEATURES, frozen_split, register_tiny, use_registry

BODY_TIMEOUT = 5.0  # serve.body_timeout_seconds for this server
HEADER_TIMEOUT = 2.0  # serve.header_timeout_seconds for this server


@contextlib.contextmanager
def uvicorn_server(app, port: int, http=None) -> Iterator[str]:
    """``app`` on uvicorn (the server `weakflow serve` runs, with the app's own HTTP protocol, or ``http``)
    in a thread; stopped, lifespan and all, after."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                           http=http or app.http_protocol))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """v1 of a tiny model as champion, served with a 5 s body timeout; the log's SQLite busy timeout is
    50 ms, so a locked file fails a write attempt at once instead of after SQLite's default 5 s."""
    from weakflow.deploy.serve import create_app

    folder = tmp_path_factory.mktemp("serve-limits")
    use_registry(folder)
    register_tiny("tiny", alias="champion")
    log_db = folder / "log.db"
    log_url = f"sqlite:///{log_db}?timeout=0.05"
    app = create_app("tiny", max_batch=1000, poll_seconds=0, log_url=log_url, body_timeout_s=BODY_TIMEOUT,
                     header_timeout_s=HEADER_TIMEOUT)
    with uvicorn_server(app, free_port()) as url:
        yield url, app, log_db, log_url


@pytest.fixture(scope="module")
def server_h11(server, tmp_path_factory):
    """The same model behind uvicorn's pure-Python h11 parser (what uvicorn uses without httptools)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from weakflow.deploy.http_limits import bounded_protocol
    from weakflow.deploy.serve import create_app

    log_url = f"sqlite:///{tmp_path_factory.mktemp('serve-h11') / 'log.db'}"
    app = create_app("tiny", poll_seconds=0, log_url=log_url, header_timeout_s=HEADER_TIMEOUT)
    with uvicorn_server(app, free_port(), http=bounded_protocol(HEADER_TIMEOUT, 16 * 1024, H11Protocol)) as url:
        yield url


def good_records(n: int) -> list[dict]:
    return frozen_split()[FEATURES].head(n).to_dict("records")


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


def test_predict_needs_a_json_content_type(server):
    url, _, _, _ = server
    body = json.dumps({"records": good_records(2)}).encode()
    before = health(url)["rows_predicted"]
    with httpx.Client(base_url=url, timeout=10) as http:
        # what a cross-site HTML form or fetch() without a preflight can send
        for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"},
                        {}):
            r = http.post("/predict", content=body, headers=headers)
            assert r.status_code == 415, (headers, r.text)
            assert r.headers["content-type"] == "application/json"
            detail = r.json()["detail"]
            assert "Content-Type: application/json" in detail, detail
            assert f"got {headers['content-type']!r}" in detail if headers else "got none" in detail
        assert health(url)["rows_predicted"] == before  # refused before the model
        for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
            r = http.post("/predict", content=body, headers={"content-type": content_type})
            assert r.status_code == 200, (content_type, r.text)
    assert health(url)["rows_predicted"] == before + 6


def test_a_request_with_64000_bad_fields_gets_a_short_422(server):
    url, _, _, _ = server
    bad = {"records": [{f: "x" for f in FEATURES} for _ in range(1000)]}  # 1000 records x 64 non-numbers
    body = json.dumps(bad).encode()
    assert 800_000 < len(body) < 1 << 20  # under serve.max_body_bytes: it reaches validation
    r = httpx.post(f"{url}/predict", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 422
    answer = r.json()
    assert answer["error_count"] == 64_000 and len(answer["detail"]) == 20
    assert answer["detail"][0]["field"] == "records[0].px_0"
    assert answer["note"] == "showing the first 20 of 64000 errors"
    assert len(r.content) < 10_000, len(r.content)
    # finite JSON numbers beyond float32 are refused after parsing: the same cap
    big = json.dumps({"records": [dict.fromkeys(FEATURES, "@")] * 30}).replace('"@"', "1e39")
    r = httpx.post(f"{url}/predict", content=big, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 422 and r.json()["error_count"] == 30 * 64 and len(r.json()["detail"]) == 20
    assert r.json()["detail"][0]["type"] == "float32_range"
    # a few errors: all listed, no note
    r = httpx.post(f"{url}/predict", json={"records": [{**good_records(1)[0], "px_3": "three"}]}, timeout=10)
    assert r.status_code == 422 and r.json()["error_count"] == 1 and "note" not in r.json()


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_body_shorter_than_its_content_length_gets_408_and_others_are_served_meanwhile(server):
    url, _, _, _ = server
    port = int(url.rsplit(":", 1)[1])
    before = health(url)["rows_predicted"]
    stalled = socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT * 6)
    try:
        partial = b'{"records": [{"px_0": 1'
        stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n" + partial)
        # another client is answered while that body is still outstanding
        r = httpx.post(f"{url}/predict", json={"records": good_records(3)}, timeout=30)
        assert r.status_code == 200
        assert select.select([stalled], [], [], 0)[0] == [], "the stalled request was answered before the other one"
        raw = read_response(stalled)  # then the stalled one gets its answer, and the connection is closed
    finally:
        stalled.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), raw[:200]
    assert b"connection: close" in head.lower()
    detail = json.loads(payload)["detail"]
    assert f"not complete within {BODY_TIMEOUT:g} s" in detail
    assert f"got {len(partial)} bytes of the 1000 declared" in detail
    assert health(url)["rows_predicted"] == before + 3  # the stalled request never reached the model


def slow_head(port: int, first: bytes = b"", lines: int = 15) -> tuple[bytes, int]:
    """``first`` (e.g. a complete request on the same keep-alive connection), then a request line and one
    header line a second, never the blank line that ends the headers, until the server answers or closes
    (at most ``lines``); returns everything the server sent until it closed, and how many header lines
    went out."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent, answered = 0, b""
    try:
        if first:  # its whole answer first (Content-Length tells where it ends); the connection stays open
            sock.sendall(first)
            while b"\r\n\r\n" not in answered:
                answered += sock.recv(65536)
            head = answered.split(b"\r\n\r\n", 1)[0].lower()
            length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            while len(answered) < len(head) + 4 + length:
                answered += sock.recv(65536)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
        while sent < lines and not select.select([sock], [], [], 1.0)[0]:
            try:
                sock.sendall(b"X-Slow-%d: 1\r\n" % sent)
            except OSError:  # closed between the select and the send
                break
            sent += 1
        return answered + read_response(sock), sent  # with no bound: no answer, the read times out, the test fails
    finally:
        sock.close()


@pytest.mark.parametrize("parser", ["auto", "h11"])
def test_headers_sent_slowly_get_408_and_the_connection_is_closed(request, server, parser):
    """A "slowloris" (header lines 1 s apart, never ending) is closed once serve.header_timeout_seconds
    have passed since it connected, also as the second request of a keep-alive connection (the bound
    restarts at that request's first byte); a client that never sends a byte is closed without an answer;
    requests that send their headers at once are served meanwhile and after."""
    url = request.getfixturevalue("server_h11") if parser == "h11" else server[0]
    port = int(url.rsplit(":", 1)[1])
    raw, sent = slow_head(port)
    assert sent < 15, f"{sent} header lines went out and the connection was still open"
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), raw[:300]
    assert b"connection: close" in head.lower()
    detail = json.loads(payload)["detail"]
    assert detail.startswith(f"request headers not complete within {HEADER_TIMEOUT:g} s (serve.header_timeout_seconds)")
    # keep-alive: one request answered, then the next one's headers trickle
    raw, sent = slow_head(port, first=b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert sent < 15 and raw.startswith(b"HTTP/1.1 200") and b"}HTTP/1.1 408 Request Timeout" in raw, raw[:400]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:  # never sends: closed, no answer
        assert read_response(idle) == b""
    r = httpx.post(f"{url}/predict", json={"records": good_records(2)}, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("parser", ["auto", "h11"])
def test_headers_larger_than_the_limit_get_431_and_the_connection_is_closed(request, server, parser):
    """1 MiB of one header, never ended, sent at once: the server answers 431 after its first read and
    closes with most of that still unread; the close must be a clean end, not a reset the client reads
    instead of EOF (closed at once, 9 of 10 such clients got ConnectionResetError here)."""
    url = request.getfixturevalue("server_h11") if parser == "h11" else server[0]
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:  # fits the two sockets' buffers: sendall returns before the server has read it all
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20))
        except OSError:
            pass
        raw = read_response(sock)  # a reset raises ConnectionResetError here
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and b"connection: close" in head.lower(), raw[:300]
    assert json.loads(payload)["detail"] == "request headers exceed 16384 bytes (serve.max_header_bytes)"
    # a request with headers within the limit is served
    r = httpx.get(f"{url}/health", headers={"x-fine": "a" * 8000}, timeout=10)
    assert r.status_code == 200


def test_health_is_degraded_while_the_log_is_locked_and_the_rows_land_after(server):
    """Another connection holds SQLite's write lock: requests are still answered, the writer's attempts
    fail and are retried (``/health`` says degraded meanwhile), and once the lock goes every answered row
    is written, none counted failed."""
    url, app, log_db, log_url = server
    log = app.state.weakflow["log"]
    assert log.flush(30)
    rows_before, failed_before = count_rows(log_url), log.failed
    assert health(url)["status"] == "ok"
    locker = sqlite3.connect(log_db, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        with httpx.Client(base_url=url, timeout=10) as http:
            for _ in range(4):
                assert http.post("/predict", json={"records": good_records(2)}).status_code == 200
        deadline = time.monotonic() + 60
        while not (status := health(url)["status"]).startswith("degraded"):
            assert time.monotonic() < deadline, f"/health never reported the failing writes: {status}"
            time.sleep(0.05)
        assert status.startswith("degraded: prediction log writes failing (attempt ") and "database is locked" in status
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert log.flush(60)
    after = health(url)
    assert after["status"] == "ok", after
    assert after["prediction_log"]["failed"] == failed_before and after["prediction_log"]["last_error"] is None
    assert count_rows(log_url) == rows_before + 8
