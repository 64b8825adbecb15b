"""The server's micro-batcher: requests of one event-loop turn share a forward pass, never mix versions."""

from __future__ import annotations

import asyncio

import numpy as np
from weakflow.deploy.batching import MicroBatcher


class Model:
    """predict = row sums times a factor; records every batch it sees."""

    def __init__(self, factor: float) -> None:
        self.factor, self.calls = factor, []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        if np.isnan(x).any():
            raise ValueError("nan row")
        return x.sum(axis=1, keepdims=True) * self.factor


def run(coro):
    return asyncio.run(coro)


def test_requests_of_one_turn_share_one_forward_and_get_their_own_rows():
    batcher, model = MicroBatcher(), Model(1.0)
    xs = [np.full((n, 3), float(i), dtype=np.float32) for i, n in enumerate([1, 4, 2, 1])]

    async def main():
        return await asyncio.gather(*(batcher(model, x) for x in xs))

    out = run(main())
    assert model.calls == [8] and batcher.batches == 1 and batcher.rows == 8
    for x, y in zip(xs, out):
        np.testing.assert_array_equal(y, x.sum(axis=1, keepdims=True))


def test_versions_are_never_mixed_and_max_rows_splits():
    batcher, old, new = MicroBatcher(max_rows=3), Model(1.0), Model(10.0)
    x = np.ones((2, 3), dtype=np.float32)

    async def main():
        return await asyncio.gather(batcher(old, x), batcher(new, x), batcher(old, x))

    a, b, c = run(main())
    assert (a == 3).all() and (c == 3).all() and (b == 30).all()
    assert old.calls == [2, 2] and new.calls == [2]  # 2 + 2 rows > max_rows 3: two passes


def test_an_error_reaches_each_waiting_request_and_the_batcher_keeps_working():
    batcher, model = MicroBatcher(), Model(1.0)
    bad = np.full((1, 3), np.nan, dtype=np.float32)

    async def main():
        return await asyncio.gather(batcher(model, bad), batcher(model, np.ones((1, 3), np.float32)),
                                    return_exceptions=True)

    first, second = run(main())
    assert isinstance(first, ValueError) and isinstance(second, ValueError)

    async def later():
        return await batcher(model, np.ones((1, 3), np.float32))

    assert run(later()).tolist() == [[3.0]]


def test_a_lone_request_is_answered_and_a_cancelled_waiter_does_not_break_its_turn():
    batcher, model = MicroBatcher(), Model(2.0)

    async def lone():
        return await asyncio.wait_for(batcher(model, np.ones((1, 2), np.float32)), timeout=1)

    assert run(lone()).tolist() == [[4.0]]

    async def one_leaves():
        gone = asyncio.ensure_future(batcher(model, np.ones((1, 2), np.float32)))
        stays = asyncio.ensure_future(batcher(model, np.full((1, 2), 3.0, np.float32)))
        await asyncio.sleep(0)  # both are queued for this turn's forward pass
        gone.cancel()  # the client went away before the pass
        return await stays, gone.cancelled()

    y, cancelled = run(one_leaves())
    assert y.tolist() == [[12.0]] and cancelled
