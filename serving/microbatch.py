"""Requests that arrive together, handled together: micro-batching on the asyncio event loop.

Under load a server reads several requests in one pass of its event loop (each client's next
request is waiting on its socket), and more over the next few passes. :class:`LoopBatcher`
hands the items submitted over consecutive passes to a single call of its handler, so what
costs the same for one lead as for ten (the feature kernels' numpy set-up, a call into the
booster) is paid once per batch. Nothing waits on a timer: a call takes its items once a few
passes of the loop (``patience``) went by without a new one, once they weigh enough, or
once ``max_wait`` is over while more keep coming (checked at each pass). An item submitted
alone waits only those few passes (microseconds on an idle loop), so an idle
server answers about as fast as without batching, and a loaded one batches more.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["LoopBatcher"]

I = TypeVar("I")
R = TypeVar("R")
_Entry = tuple[I, asyncio.Future[R], int]  # a pending item, its submitter's future, its weight


class LoopBatcher(Generic[I, R]):
    """Coalesce items submitted over the same few passes of the event loop into calls of
    ``handle``.

    Parameters
    ----------
    handle : async callable
        Takes a list of items, returns their results in the same order. An exception it
        raises is raised to every submitter of that call.
    weight : callable
        The weight of an item (the leads of a request), a positive integer; another value is
        a ValueError to its submitter.
    max_weight : int
        A call takes items up to this total weight (at least one item); the rest go to the
        next call, after the loop has had a turn. Items that weigh this much together are
        handled without waiting for more.
    patience : int
        Passes of the loop a call waits for more items: it takes them once this many passes
        went by without a new one (0 or less: the items of one pass).
    max_wait : float or None
        Seconds (of the loop's clock) after which a call takes its items even if more keep
        coming: the most batching adds to a request's wait.
    """

    def __init__(self, handle: Callable[[list[I]], Awaitable[list[R]]], *,
                 weight: Callable[[I], int] = lambda item: 1, max_weight: int = 64,
                 patience: int = 0, max_wait: float | None = None) -> None:
        self._handle = handle
        self._weight = weight
        self._max_weight = max_weight
        self._patience = patience
        self._max_wait = max_wait
        self._pending: list[_Entry[I, R]] = []
        self._pending_weight = 0
        self._next: asyncio.Task[None] | None = None  # the flush that will take new items
        self._flushing: set[asyncio.Task[None]] = set()

    async def submit(self, item: I) -> R:
        """Handle ``item`` with the others submitted around the same passes of the loop; its
        result."""
        loop = asyncio.get_running_loop()
        weight = self._weight(item)  # (raises to its submitter)
        if not isinstance(weight, int) or weight < 1:
            raise ValueError(f"an item's weight must be a positive integer, got {weight!r}")
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future, weight))
        self._pending_weight += weight
        if self._next is None:
            # first step at the next pass of the loop; in a context of its own, not the first
            # submitter's (a request's trace ids are not the batch's)
            task = loop.create_task(self._flush(), context=contextvars.Context())
            self._next = task
            self._flushing.add(task)  # the loop keeps weak references to tasks only
            task.add_done_callback(self._done)
        return await future

    def _done(self, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        if task is self._next:  # cancelled before it took its items (the loop is closing)
            self._next = None
            pending, self._pending, self._pending_weight = self._pending, [], 0
            for _, future, _ in pending:
                future.cancel()

    async def _gather(self) -> None:
        """Let the loop run while items keep coming: until ``patience`` passes in a row bring
        none, they weigh ``max_weight`` or ``max_wait`` is over."""
        seen, quiet = len(self._pending), 0
        loop = asyncio.get_running_loop()
        deadline = None if self._max_wait is None else loop.time() + self._max_wait
        while quiet < self._patience and self._pending_weight < self._max_weight \
                and (deadline is None or loop.time() < deadline):
            await asyncio.sleep(0)
            quiet = 0 if len(self._pending) > seen else quiet + 1
            seen = len(self._pending)

    async def _flush(self) -> None:
        await self._gather()
        pending, self._pending, self._next = self._pending, [], None
        self._pending_weight = 0
        try:
            for i, batch in enumerate(self._batches(pending)):
                if i:
                    await asyncio.sleep(0)  # let the loop read and answer between calls
                items = [item for item, _, _ in batch]
                try:
                    results = await self._handle(items)
                    if len(results) != len(items):
                        raise RuntimeError(f"batch handler gave {len(results)} results for "
                                           f"{len(items)} items")
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # handed to the submitters of this call
                    for _, future, _ in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                for (_, future, _), result in zip(batch, results):
                    if not future.done():  # a submitter that gave up (cancelled) has no reader
                        future.set_result(result)
        finally:  # cancelled (the loop is shutting down): none hangs
            for _, future, _ in pending:
                if not future.done():
                    future.cancel()

    def _batches(self, pending: list[_Entry[I, R]]) -> list[list[_Entry[I, R]]]:
        """``pending`` in order, cut into runs of at most ``max_weight`` (one item at least)."""
        batches: list[list[_Entry[I, R]]] = []
        current: list[_Entry[I, R]] = []
        total = 0
        for entry in pending:
            w = entry[2]  # its weight
            if current and total + w > self._max_weight:
                batches.append(current)
                current, total = [], 0
            current.append(entry)
            total += w
        if current:
            batches.append(current)
        return batches
