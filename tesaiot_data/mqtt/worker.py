"""The subscriber's worker: the queue between paho's network thread and the batch handler.

The network thread appends messages (`put`, `put_many`); the worker thread takes them in
batches and calls the handler, so that slow processing never starves the keepalive.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from tesaiot_data.messages import RawMessage

__all__ = ["READ_AHEAD", "Worker"]

# The network thread wakes the worker when it appends to an empty queue (once per batch, not
# per message). A worker woken less than _BATCH_INTERVAL s after it took its last batch waits
# out the rest, unless _BATCH_ENOUGH messages wait already: under load the batches grow and
# their fixed cost (window chunk, sinks, counters) is shared by more messages; at 1,000 msg/s
# a row waits at most _BATCH_INTERVAL s longer (the latency budget is 500 ms).
_BATCH_INTERVAL = 0.05
_BATCH_ENOUGH = 2_000
_IDLE_WAIT = 1.0  # seconds; a safety net only, the event wakes the worker
#: Messages waiting for the worker beyond which the network thread lets the worker finish a
#: batch before it reads on (see `Worker.catch_up`).
READ_AHEAD = 2 * _BATCH_ENOUGH
_CATCH_UP_WAIT = _BATCH_INTERVAL


class Worker:
    """A queue of received messages and the thread that hands them to `handle` in batches.

    Args:
        handle: Called on the worker thread with each batch, in arrival order; it must not
            raise (the client counts and logs failures inside it).

    Attributes:
        queue: The messages waiting (a deque; the network thread appends to it).
        handled: Messages whose batch `handle` has returned from.
    """

    def __init__(self, handle: Callable[[Sequence[RawMessage]], None]) -> None:
        self._handle = handle
        self.queue: deque[RawMessage] = deque()
        self.handled = 0
        self._wake = threading.Event()  # set by the network thread on an empty queue
        self._batch_done = threading.Event()  # the worker finished a batch
        self._busy = False  # the worker holds messages taken from the queue

    def put(self, message: RawMessage) -> None:
        """Queue one message (network thread); wakes the worker once per batch."""
        queue = self.queue
        waiting = len(queue)
        queue.append(message)
        if not waiting:  # the worker may be asleep
            self._wake.set()

    def put_many(self, messages: Sequence[RawMessage]) -> None:
        """Queue messages in order (network thread)."""
        queue = self.queue
        waiting = len(queue)
        queue.extend(messages)
        if not waiting:
            self._wake.set()

    def wake(self) -> None:
        """Wake the worker, for example to see that the network thread is done."""
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued message has been handled; False on timeout (seconds)."""
        deadline = time.monotonic() + timeout
        while self.queue or self._busy:
            if time.monotonic() >= deadline:
                return False
            self._batch_done.clear()
            if self.queue or self._busy:
                self._batch_done.wait(0.05)
        return True

    def catch_up(self) -> None:
        """Let a worker that is behind finish its batch (at most _CATCH_UP_WAIT s), then return.

        With read buffers the network thread reads a burst faster than a busy worker handles
        it. What it reads ahead waits here as Python objects (~450 bytes a message) rather
        than as bytes in the socket and the broker, and the allocator keeps that memory after
        the burst: 45,000-message bursts grew the process by ~77 MB instead of ~33 (~35 with
        this wait; see tests/test_collector_reliability.py). Waiting hands the GIL to the
        worker. It paces and does not stop: while a worker is stuck, paho's loop() still
        runs after every wait (keepalive never starves) and reads a packet, so the queue
        still fills up to the client's `queue_size`, beyond which messages are dropped and
        counted.
        """
        self._batch_done.clear()
        if len(self.queue) >= READ_AHEAD:
            self._batch_done.wait(_CATCH_UP_WAIT)

    def run(self, network_done: threading.Event) -> None:
        """The worker thread's loop; returns once `network_done` is set and the queue is empty."""
        queue, wake = self.queue, self._wake
        taken_at = -_BATCH_INTERVAL
        while True:
            done = network_done.is_set()  # read before the queue: nothing comes after it
            if not queue:
                self._batch_done.set()
                if done:
                    return
                wake.clear()
                if not queue:  # else it came between the check and clear(): no wake-up
                    wake.wait(_IDLE_WAIT)
                continue
            if not done and len(queue) < _BATCH_ENOUGH:
                delay = taken_at + _BATCH_INTERVAL - time.monotonic()
                if delay > 0:
                    network_done.wait(delay)  # gather more; returns at once on shutdown
                    continue
            taken_at = time.monotonic()
            self._busy = True
            batch = [queue.popleft() for _ in range(len(queue))]
            try:
                self._handle(batch)
            finally:
                self.handled += len(batch)
                self._busy = False
                self._batch_done.set()
