"""LoopBatcher: what is submitted in one pass of the event loop, or over the next passes while
items keep coming (``patience``), is handled in one call."""

from __future__ import annotations

import asyncio

import pytest

from serving.microbatch import LoopBatcher


class Recorder:
    """A handler that doubles its items and remembers the calls it got."""

    def __init__(self, fail_on: object = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on = fail_on

    async def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        if self.fail_on in items:
            raise ValueError("injected")
        return [2 * i for i in items]


def test_items_submitted_together_are_one_call_with_results_in_order():
    handler = Recorder()

    async def main() -> list[int]:
        batcher = LoopBatcher(handler)
        return await asyncio.gather(*(batcher.submit(i) for i in range(5)))

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    assert handler.calls == [[0, 1, 2, 3, 4]]


def test_an_item_alone_is_handled_at_once_and_later_items_make_new_calls():
    handler = Recorder()

    async def main() -> list[int]:
        batcher = LoopBatcher(handler)
        first = await batcher.submit(1)
        second = await asyncio.gather(batcher.submit(2), batcher.submit(3))
        return [first, *second]

    assert asyncio.run(main()) == [2, 4, 6]
    assert handler.calls == [[1], [2, 3]]


def test_calls_are_cut_at_the_maximum_weight_in_order():
    handler = Recorder()

    async def main() -> list[int]:
        batcher = LoopBatcher(handler, weight=lambda i: i, max_weight=5)
        return await asyncio.gather(*(batcher.submit(i) for i in (2, 3, 4, 9, 1)))

    assert asyncio.run(main()) == [4, 6, 8, 18, 2]
    # 2+3 fit, 4 starts a call, 9 alone exceeds the maximum but still gets its own call
    assert handler.calls == [[2, 3], [4], [9], [1]]


def test_an_error_reaches_the_submitters_of_its_call_only():
    handler = Recorder(fail_on=4)

    async def main() -> list[object]:
        batcher = LoopBatcher(handler, weight=lambda i: 1, max_weight=2)
        return await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3, 4)),
                                    return_exceptions=True)

    out = asyncio.run(main())
    assert out[:2] == [2, 4]
    assert all(isinstance(e, ValueError) for e in out[2:])


def test_a_wrong_number_of_results_is_an_error_not_a_mismatch():
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> None:
        batcher = LoopBatcher(short)
        await asyncio.gather(batcher.submit(1), batcher.submit(2))

    with pytest.raises(RuntimeError, match="2 items"):
        asyncio.run(main())


def test_a_submitter_that_gave_up_does_not_disturb_the_others():
    started = []

    async def slow(items: list[int]) -> list[int]:
        started.append(list(items))
        await asyncio.sleep(0.05)
        return items

    async def main() -> list[object]:
        batcher = LoopBatcher(slow)
        gone = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        return await asyncio.gather(gone, kept, return_exceptions=True)

    out = asyncio.run(main())
    assert started == [[1, 2]]
    assert isinstance(out[0], asyncio.CancelledError) and out[1] == 2


def test_a_flush_cancelled_before_it_started_leaves_the_batcher_usable():
    handler = Recorder()

    async def main() -> tuple[object, int]:
        batcher = LoopBatcher(handler)
        waiting = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0)  # the submit ran and scheduled its flush
        for task in list(batcher._flushing):
            task.cancel()
        gone = await asyncio.gather(waiting, return_exceptions=True)
        return gone[0], await batcher.submit(5)

    gone, later = asyncio.run(main())
    assert isinstance(gone, asyncio.CancelledError) and later == 10
    assert handler.calls == [[5]]


def test_the_handler_runs_outside_the_submitters_context():
    import contextvars

    request_id = contextvars.ContextVar("request_id", default=None)
    seen = []

    async def handle(items: list[int]) -> list[int]:
        seen.append(request_id.get())
        return items

    async def main() -> None:
        batcher = LoopBatcher(handle)
        request_id.set("first-request")
        await batcher.submit(1)

    asyncio.run(main())
    assert seen == [None]


async def _passes(n: int) -> None:
    """Let the event loop run ``n`` passes."""
    for _ in range(n):
        await asyncio.sleep(0)


async def _after(passes: int, batcher: LoopBatcher, item: int) -> int:
    await _passes(passes)
    return await batcher.submit(item)


def test_items_arriving_over_the_next_passes_join_the_call_while_they_keep_coming():
    def calls(patience: int) -> list[list[int]]:
        handler = Recorder()

        async def main() -> list[int]:
            batcher = LoopBatcher(handler, patience=patience)
            # one item every other pass: never two quiet passes in a row
            return await asyncio.gather(*(_after(2 * i, batcher, i) for i in range(6)))

        assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10]
        return handler.calls

    assert calls(patience=3) == [[0, 1, 2, 3, 4, 5]]
    assert calls(patience=0) == [[0], [1], [2], [3], [4], [5]]  # each pass's items alone


def test_a_call_waits_its_patience_in_passes_of_the_loop_not_on_a_timer():
    handler = Recorder()

    async def main() -> tuple[int, int]:
        batcher = LoopBatcher(handler, patience=5)
        passes = 0
        first = asyncio.ensure_future(batcher.submit(1))
        while not first.done():
            await asyncio.sleep(0)
            passes += 1
        late = await _after(1, batcher, 2)  # after the call: a call of its own
        return passes, late

    passes, late = asyncio.run(main())
    assert 5 <= passes <= 8  # the five quiet passes, then the call
    assert late == 4 and handler.calls == [[1], [2]]


def test_items_that_weigh_the_maximum_are_handled_without_waiting_for_more():
    handler = Recorder()

    async def main() -> int:
        batcher = LoopBatcher(handler, weight=lambda i: 1, max_weight=2, patience=1000)
        both = asyncio.ensure_future(asyncio.gather(batcher.submit(1), batcher.submit(2)))
        passes = 0
        while not both.done():
            await asyncio.sleep(0)
            passes += 1
        return passes

    assert asyncio.run(main()) <= 5  # not the 1,000 quiet passes
    assert handler.calls == [[1, 2]]


def test_a_weight_that_raises_reaches_its_submitter_only():
    handler = Recorder()

    def weight(i: int) -> int:
        if i == 3:
            raise TypeError("cannot weigh")
        return 1

    async def main() -> list[object]:
        batcher = LoopBatcher(handler, weight=weight, patience=2)
        out = await asyncio.gather(*(batcher.submit(i) for i in (1, 3, 2)),
                                   return_exceptions=True)

        later = await batcher.submit(5)  # still usable
        return [*out, later]

    out = asyncio.run(main())
    assert out[0] == 2 and isinstance(out[1], TypeError) and out[2] == 4 and out[3] == 10
    assert handler.calls == [[1, 2], [5]]


@pytest.mark.parametrize("weight", [0, -1, 2.5])
def test_a_weight_that_is_not_a_positive_integer_is_refused(weight):
    async def main() -> None:
        await LoopBatcher(Recorder(), weight=lambda i: weight).submit(1)

    with pytest.raises(ValueError, match="positive integer"):
        asyncio.run(main())


def test_the_maximum_weight_reached_while_gathering_ends_the_wait_every_time():
    """Items trickling in one every other pass: each call closes when they weigh the
    maximum, call after call (the weight counted anew for each call)."""
    handler = Recorder()

    async def main() -> list[int]:
        batcher = LoopBatcher(handler, weight=lambda i: 1, max_weight=3, patience=1000)
        return await asyncio.gather(*(_after(2 * i, batcher, i) for i in range(9)))

    assert asyncio.run(main()) == [2 * i for i in range(9)]
    assert handler.calls == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_a_call_takes_its_items_after_max_wait_even_if_more_keep_coming():
    handler = Recorder()

    async def main() -> None:
        batcher = LoopBatcher(handler, max_weight=10**9, patience=1000, max_wait=0.02)
        stop = asyncio.Event()

        async def stream() -> None:  # an item every pass, never quiet (bounded: no hang)
            i = 0
            while not stop.is_set() and i < 200_000:
                asyncio.ensure_future(batcher.submit(i))
                i += 1
                await asyncio.sleep(0)

        feeding = asyncio.ensure_future(stream())
        while not handler.calls:
            await asyncio.sleep(0)
        stop.set()
        await feeding

    asyncio.run(main())
    assert handler.calls[0][0] == 0 and 1 < len(handler.calls[0]) < 200_000


def test_a_flush_cancelled_while_gathering_cancels_its_items_and_leaves_the_batcher_usable():
    handler = Recorder()

    async def main() -> tuple[object, int]:
        batcher = LoopBatcher(handler, patience=1000)
        waiting = asyncio.ensure_future(batcher.submit(1))
        await _passes(5)  # the flush is gathering
        assert not handler.calls
        for task in list(batcher._flushing):
            task.cancel()
        gone = await asyncio.gather(waiting, return_exceptions=True)
        assert batcher._pending == [] and batcher._pending_weight == 0  # nothing left over
        batcher._patience = 0
        return gone[0], await batcher.submit(5)

    gone, later = asyncio.run(main())
    assert isinstance(gone, asyncio.CancelledError) and later == 10
    assert handler.calls == [[5]]
