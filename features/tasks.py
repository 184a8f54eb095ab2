"""Running a list of calls in parallel, with progress: the batch's and training's task runner.

A :data:`Runner` takes calls ``(function, arguments, progress weight)`` and reports each
result as it completes. :func:`local_runner` runs them on a pool of processes (started by
``forkserver``: no fork of a process whose OpenMP threads already ran); the Spark engine
(:func:`serving.spark_engine.spark_runner`) runs them as Spark tasks.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

log = logging.getLogger(__name__)


def process_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    # forkserver: no fork of a process whose OpenMP (LightGBM) threads already ran
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer,
                               initargs=initargs)


Call = tuple[Callable[..., Any], tuple, int]  # function, arguments, progress weight
#: runs calls (in any order, in parallel where it can) and reports each result to ``on_done``
Runner = Callable[[list[Call], Callable[[int, Any], None]], None]


def local_runner(workers: int, initializer: Callable | None = None, initargs: tuple = (),
                 *, min_weight: int = 0) -> Runner:
    """A :data:`Runner` on a pool of ``workers`` processes (one: in this process).

    Calls whose weights add up to less than ``min_weight`` run in this process: starting a
    pool (a second of imports per process) costs more than small work gains from it.
    """
    def run(calls: list[Call], on_done: Callable[[int, Any], None]) -> None:
        if len(calls) > 1 and workers > 1 and sum(max(w, 0) for _, _, w in calls) >= min_weight:
            with process_pool(min(workers, len(calls)), initializer, initargs) as pool:
                _run_tasks(pool, calls, on_done)
            return
        if initializer is not None and calls:
            initializer(*initargs)
        for fn, args, weight in calls:
            on_done(weight, fn(*args))

    return run


def _run_tasks(pool: ProcessPoolExecutor, calls: list[Call],
               on_done: Callable[[int, Any], None]) -> None:
    """Submit every call, report each result as it completes; first error cancels the rest."""
    pending: dict[Future, int] = {pool.submit(fn, *args): weight for fn, args, weight in calls}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                weight = pending.pop(fut)
                on_done(weight, fut.result())
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise


# ---------------------------------------------------------------------------
# Progress: rich bar on a terminal, plain lines otherwise
# ---------------------------------------------------------------------------


class Progress:
    """A rich progress bar (rows/s, ETA) on a terminal; plain log lines otherwise."""

    def __init__(self, console: Any | None) -> None:
        self.console = console
        self.live = console is not None and getattr(console, "is_terminal", False)
        self._bar: Any = None

    @contextlib.contextmanager
    def task(self, label: str, total: int, unit: str) -> Iterator[Callable[[int], None]]:
        start = time.perf_counter()
        done = [0]
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            class RateColumn(TextColumn):
                def render(self, task: Any) -> Any:
                    from rich.text import Text

                    speed = task.finished_speed or task.speed
                    return Text(f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s")

            bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TaskProgressColumn(), RateColumn(""), TimeElapsedColumn(),
                               TextColumn("eta"), TimeRemainingColumn(), console=self.console,
                               transient=False)
            with bar:
                tid = bar.add_task(label, total=total)

                def advance(n: int) -> None:
                    bar.advance(tid, n)

                yield advance
            return

        def advance_plain(n: int) -> None:
            if n <= 0 and done[0]:  # nothing new (an empty slice): no repeated line
                return
            done[0] += n
            elapsed = time.perf_counter() - start
            rate = done[0] / elapsed if elapsed > 0 else 0.0
            eta = (total - done[0]) / rate if rate > 0 else float("nan")
            msg = (f"{label}: {done[0]:,}/{total:,} {unit} ({100 * done[0] / max(total, 1):.0f}%), "
                   f"{rate:,.0f} {unit}/s, elapsed {elapsed:.0f} s, eta {eta:.0f} s")
            log.info(msg)
            if self.console is not None:
                self.console.print(msg, highlight=False)

        yield advance_plain




def say(console: Any | None, msg: str) -> None:
    """A line for the operator: logged, and printed on ``console`` when there is one."""
    log.info(msg)
    if console is not None:
        console.print(msg, highlight=False)
