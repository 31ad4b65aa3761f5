"""Per-model async micro-batcher: token-budget packing, length sorting, bounded lanes, cancellation.

Why here and not only in Triton: on CPU, padding decides throughput (a random batch pads 2-3x), so rows
are grouped by length before the model sees them; and admission control (429 before any work) needs the
queue where the request is. Triton's dynamic batcher then only merges batches of several gateway
processes.

Packing (after TEI's queue): the oldest rows form a window in arrival order, the window is sorted by
length, and the first batch is cut from it under `max_batch_tokens` (counting padding: rows x longest)
and `max_batch_size`; the rest of the window goes back to the front of the queue, so nothing starves.
A second, summed budget serves VLM items (a row is an item): `max_batch_patches` bounds the vision
patches of a batch (the tower runs over all of them, unpadded), while `max_batch_tokens` counts the
language-model tokens (text + visual, padded); a row that no batch could hold is refused with 413
(`check_fits`) before it is queued. Text models set neither and behave as before.
Lanes: `online` is always served before `backfill` (re-embedding during model upgrades). While online
traffic arrived within the window, `backfill` is also capped at `backfill_share` of the encoder's time
over a sliding window, in batches cut to that share of a full one: a backfill batch in flight delays the
next online batch, so a momentarily empty online queue must not hand the encoder to a backfill
(measured: bench/backfill_share.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from services import metrics
from services.errors import Overloaded, PayloadTooLarge

LANES = ("online", "backfill")
DELIVER_SLICE = 8  # callers answered per loop turn once a batch's vectors are back
R = TypeVar("R")  # a row: token ids (np.ndarray) for text models, a prepared item for VLM models
Runner = Callable[[list[R]], Awaitable[np.ndarray]]


@dataclass(eq=False)
class _Job:
    """One caller's rows; done when every row has a vector."""

    size: int
    future: asyncio.Future[np.ndarray]
    out: np.ndarray | None = None
    remaining: int = 0
    cancelled: bool = False

    def deliver(self, index: int, vec: np.ndarray) -> None:
        if self.size == 1:  # a single-row job gets a view of the batch output: no copy
            self.out = vec[None, :]
        else:
            if self.out is None:
                self.out = np.empty((self.size, vec.shape[-1]), dtype=np.float32)
            self.out[index] = vec
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(self.out)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Permit:
    """Admission for `n` inputs of one lane, held until the request is answered (queued and in-flight
    inputs both count, as TEI's permits do): refusing happens before any tokenizing or hashing."""

    __slots__ = ("_batcher", "lane", "n")

    def __init__(self, batcher: Batcher[Any], lane: str, n: int) -> None:
        self._batcher, self.lane, self.n = batcher, lane, n

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc: object) -> None:
        self._batcher.admitted[self.lane] -= self.n


@dataclass(eq=False)
class _Row(Generic[R]):
    job: _Job
    index: int
    data: R
    cost: int
    patches: int = 0
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher(Generic[R]):
    def __init__(
        self,
        model: str,
        run: Runner[R],
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        inflight: int = 2,
        retry_after_s: int = 1,
        cost: Callable[[R], int] = len,  # type: ignore[assignment]  # len for token-id rows
        patch_cost: Callable[[R], int] | None = None,
        max_batch_patches: int | None = None,
        backfill_share: float = 1.0,
        share_window_s: float = 5.0,
    ) -> None:
        self.model = model
        self.run = run
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_patches = max_batch_patches
        self.patch_cost = patch_cost
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.inflight = inflight
        self.cost = cost
        self.queues: dict[str, deque[_Row[R]]] = {lane: deque() for lane in LANES}
        self.admitted = dict.fromkeys(LANES, 0)  # inputs holding a permit: queued or in flight
        self._slots = asyncio.Semaphore(inflight)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.backfill_share = backfill_share
        self.share_window = share_window_s
        self._backfill_runs: deque[tuple[float, float]] = deque()  # (start, end) of recent backfill batches
        self._backfill_started: dict[int, float] = {}  # in-flight backfill batches by id
        self._last_online = float("-inf")  # the cap applies only while online traffic is around

    # -- public -----------------------------------------------------------------------------------
    def depth(self, lane: str | None = None) -> int:
        return sum(len(q) for name, q in self.queues.items() if lane in (None, name))

    def admit(self, n: int, lane: str = "online") -> Permit:
        """A permit for `n` inputs, or 429 at once when the lane already holds `max_queue` of them."""
        held = self.admitted[lane]
        if held + n > self.max_queue:
            raise Overloaded(
                f"{self.model}: {lane} queue is full ({held} inputs admitted)", retry_after=self.retry_after_s
            )
        self.admitted[lane] = held + n
        return Permit(self, lane, n)

    def check_fits(self, row: R, field: str, what: str = "input") -> None:
        """413 naming `field` for a row over a batch's budget (it would otherwise run alone, over it)."""
        tokens = int(self.cost(row))
        if tokens > self.max_batch_tokens:
            raise PayloadTooLarge(
                f"{what} has {tokens} tokens; a batch holds at most {self.max_batch_tokens}", field=field
            )
        patches = self._patches(row)
        if self.max_batch_patches is not None and patches > self.max_batch_patches:
            raise PayloadTooLarge(
                f"{what} has {patches} vision patches; a batch holds at most {self.max_batch_patches}",
                field=field,
            )

    def _patches(self, row: R) -> int:
        return int(self.patch_cost(row)) if self.patch_cost is not None else 0

    async def submit(self, rows: list[R], lane: str = "online") -> np.ndarray:
        """Queue rows (admitted beforehand, see `admit`) and wait for their vectors ([len(rows), dim]).

        If the caller is cancelled (client gone), its queued rows are dropped before any work.
        """
        if not rows:
            return np.empty((0, 0), dtype=np.float32)
        queue = self.queues[lane]
        self._ensure_running()
        if lane == "online":
            self._last_online = time.perf_counter()
        job = _Job(len(rows), asyncio.get_running_loop().create_future(), remaining=len(rows))
        now = time.perf_counter()
        for i, data in enumerate(rows):
            queue.append(_Row(job, i, data, max(int(self.cost(data)), 1), self._patches(data), now))
        metrics.QUEUE_DEPTH.labels(self.model, lane).set(len(queue))
        self._wakeup.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            self._drop_cancelled(lane)
            raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._inflight):
            t.cancel()
        for queue in self.queues.values():
            for row in queue:
                row.job.fail(asyncio.CancelledError())
            queue.clear()

    # -- scheduling -------------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.model}")

    def _drop_cancelled(self, lane: str) -> None:
        queue = self.queues[lane]
        kept = [r for r in queue if not r.job.cancelled]
        if len(kept) != len(queue):
            queue.clear()
            queue.extend(kept)
            metrics.QUEUE_DEPTH.labels(self.model, lane).set(len(queue))

    def _lane(self) -> tuple[str | None, float | None]:
        """(lane to serve next, None) or (None, seconds until the backfill share allows a batch)."""
        if self.queues["online"]:
            return "online", None
        if not self.queues["backfill"]:
            return None, None
        if not self._online_recently():
            return "backfill", None  # nobody to protect: the whole encoder
        over = self.backfill_busy() - self.backfill_share * self.share_window
        return ("backfill", None) if over < 0 else (None, min(max(over, 0.01), self.share_window))

    def _online_recently(self) -> bool:
        return time.perf_counter() - self._last_online < self.share_window

    def backfill_busy(self) -> float:
        """Encoder seconds spent on backfill batches in the last window (in-flight ones count so far)."""
        now = time.perf_counter()
        since = now - self.share_window
        while self._backfill_runs and self._backfill_runs[0][1] <= since:
            self._backfill_runs.popleft()
        done = sum(end - max(start, since) for start, end in self._backfill_runs)
        return done + sum(now - max(start, since) for start in self._backfill_started.values())

    def _full(self, queue: deque[_Row[R]]) -> bool:
        if len(queue) >= self.max_batch_size:
            return True
        if self.max_batch_patches is not None and sum(r.patches for r in queue) >= self.max_batch_patches:
            return True
        longest = max(r.cost for r in queue)
        return longest * (len(queue) + 1) > self.max_batch_tokens

    async def _loop(self) -> None:
        while True:
            lane, hold = self._lane()
            if lane is None:
                self._wakeup.clear()
                if hold is None:
                    await self._wakeup.wait()
                else:  # backfill over its share: wake for online work, or when the share frees up
                    await self._sleep_unless_woken(hold)
                continue
            queue = self.queues[lane]
            # Let a partial batch fill for up to max_wait after its oldest row arrived.
            wait = queue[0].enqueued + self.max_wait - time.perf_counter()
            if wait > 0 and not self._full(queue):
                self._wakeup.clear()
                await self._sleep_unless_woken(wait)
                continue
            await self._slots.acquire()
            batch = self._cut(lane)
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._dispatch(lane, batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _sleep_unless_woken(self, seconds: float) -> None:
        """Wait for a wakeup or `seconds`. Not `wait_for`: on 3.11 it can swallow a cancellation that races
        the wakeup, and `close()` would then wait forever for a loop that went back to sleep."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()

    def _cut(self, lane: str) -> list[_Row[R]]:
        queue = self.queues[lane]
        window: list[_Row[R]] = []
        while queue and len(window) < 4 * self.max_batch_size:
            row = queue.popleft()
            if not row.job.cancelled:
                window.append(row)
        window_sorted = sorted(window, key=lambda r: r.cost, reverse=True)
        # a backfill batch is cut to its share of a full one: an online row arriving meanwhile waits for
        # at most that (head-of-line blocking), not for a full batch of long documents
        scale = self.backfill_share if lane == "backfill" and self._online_recently() else 1.0
        max_rows = max(1, int(self.max_batch_size * scale))
        max_tokens = max(1, int(self.max_batch_tokens * scale))
        max_patches = max(1, int(self.max_batch_patches * scale)) if self.max_batch_patches else None
        batch: list[_Row[R]] = []
        patches = 0
        for row in window_sorted:
            longest = batch[0].cost if batch else row.cost
            if batch and (len(batch) >= max_rows or longest * (len(batch) + 1) > max_tokens):
                break
            if batch and max_patches is not None and patches + row.patches > max_patches:
                continue  # a row with fewer patches further down the window may still fit
            batch.append(row)
            patches += row.patches
        taken = {id(r) for r in batch}
        queue.extendleft(reversed([r for r in window if id(r) not in taken]))
        metrics.QUEUE_DEPTH.labels(self.model, lane).set(len(queue))
        return batch

    async def _dispatch(self, lane: str, batch: list[_Row[R]]) -> None:
        now = time.perf_counter()
        if lane == "backfill":
            self._backfill_started[id(batch)] = now
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                start = self._backfill_started.pop(id(batch), None)
                if start is not None:
                    self._backfill_runs.append((start, time.perf_counter()))
                self._slots.release()
                self._wakeup.set()

        delivered = 0
        try:
            for row in batch:
                metrics.QUEUE_TIME.labels(self.model).observe(now - row.enqueued)
            metrics.BATCH_SIZE.labels(self.model).observe(len(batch))
            metrics.BATCH_TOKENS.labels(self.model).observe(len(batch) * batch[0].cost)
            try:
                vectors = await self.run([r.data for r in batch])
                if len(vectors) != len(batch):
                    raise RuntimeError(
                        f"{self.model}: the encoder returned {len(vectors)} rows for {len(batch)}"
                    )
            except BaseException as exc:
                for row in batch:
                    row.job.fail(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            # The encoder is free: let the loop send the next batch before these rows' callers run their
            # response paths, and answer them in slices with the loop polling the sockets in between, so
            # neither the encoder nor a new request (a 429 costs nothing, but it waits for the loop) waits
            # for a whole batch of responses (measured: bench/README.md, "Answering a batch").
            release()
            for start in range(0, len(batch), DELIVER_SLICE):
                await asyncio.sleep(0)
                stop = start + DELIVER_SLICE
                for row, vec in zip(batch[start:stop], vectors[start:stop], strict=True):
                    row.job.deliver(row.index, vec)
                delivered = stop
        except asyncio.CancelledError as exc:  # closed while answering: nobody is left waiting
            for row in batch[delivered:]:
                row.job.fail(exc)
            raise
        finally:
            release()


def pad_tokens(rows: list[np.ndarray], left: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pad token-id rows to the longest: ids (pad 0) and attention mask."""
    longest = max(len(r) for r in rows)
    ids = np.zeros((len(rows), longest), dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, r in enumerate(rows):
        if left:
            ids[i, longest - len(r) :] = r
            mask[i, longest - len(r) :] = 1
        else:
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
    return ids, mask
