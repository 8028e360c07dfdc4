"""``engine``: a simulated asynchronous hardware crypto engine behind the backend contract.

What is simulated is the engine's *timing*; the bytes are computed by a real cipher (the
``multidu`` code), so data stays right unless a fault says otherwise.

* A ring of ``queue_depth`` slots: ``submit`` returns IN_PROGRESS while a slot is free, BUSY
  when the ring is full — the request then waits on the backlog and its callback first gets
  RESTART (``-EINPROGRESS``) when it enters the ring, then its result.
* ``channels`` jobs run at once, in ring order.  A job takes ``setup_us`` + ``per_unit_us`` per
  data unit + its bytes at ``throughput_mbps``; without ``native_multi_du`` a request is one job
  per data unit, each paying the setup (the point of the comparison).
* Requests are submitted on the trio thread, and completions come by callback from the engine's
  own task, never from the submitter's.
* Faults, each from its own seeded stream: ``error_rate`` (completion with -EIO),
  ``lost_rate`` (no completion ever: the convert loop's timeout must notice), ``busy_storm``
  (every so many submissions the ring claims to be full for a while), ``nomem_rate``
  (-ENOMEM for multi-unit requests: memory pressure) and ``corrupt`` (wrong output, which the
  start-up self-test catches).

The bytes are computed at the start of a job's simulated time and the job completes when that
time is over (``overruns`` counts jobs whose computing took longer).  Host CPU spent computing
them is counted apart (``engine_compute_cpu_s``): it stands for work the hardware would do, so
studies subtract it from the daemon's CPU time.
"""

import errno
import random
import time
from collections import deque
from dataclasses import dataclass

import trio

from cryptfs.backends.base import RESTART, BackendStats, Caps, CryptoRequest, Status, Unavailable
from cryptfs.backends.multidu import MultiDuBackend
from cryptfs.backends.software import SoftwareBackend
from cryptfs.crypto.spec import CipherSpec
from cryptfs.util.latency import LatencyWindow
from cryptfs.util.options import at_least, option, probability


@dataclass
class EngineOptions:
    queue_depth: int = option(64, "ring slots", at_least(1))
    channels: int = option(1, "jobs the engine runs at once", at_least(1))
    setup_us: float = option(20.0, "per-job setup latency, microseconds", at_least(0))
    per_unit_us: float = option(0.5, "per data unit cost, microseconds", at_least(0))
    throughput_mbps: float = option(1000.0, "bytes per second per channel, MB/s", at_least(1))
    native_multi_du: bool = option(True, "one job per request (else one per data unit)")
    error_rate: float = option(0.0, "fault: completions with -EIO", probability)
    lost_rate: float = option(0.0, "fault: completions that never come", probability)
    busy_storm_every: int = option(0, "fault: every N submissions the ring claims to be full "
                                   "(0: never)", at_least(0))
    busy_storm_length: int = option(16, "fault: submissions a storm lasts", at_least(1))
    nomem_rate: float = option(0.0, "fault: -ENOMEM for multi-unit requests", probability)
    corrupt: bool = option(False, "fault: wrong output (the self-test refuses the engine)")
    seed: int = option(0, "seed of the fault streams")


class EngineBackend:
    name = "engine"
    Options = EngineOptions

    def __init__(self, spec: CipherSpec, key: bytes | bytearray,
                 options: EngineOptions | None = None, threads: int = 1):
        """``threads`` is ignored: the engine computes its bytes on its own task, one job at a
        time per channel, so the host CPU it stands for can be measured."""
        o = self.options = options or EngineOptions()
        try:
            self._cipher = MultiDuBackend(spec, key)      # its bytes: the native core
        except Unavailable:
            self._cipher = SoftwareBackend(spec, key)     # or the reference, auto-split
        self.caps = Caps(native_multi_du=o.native_multi_du, asynchronous=True,
                         derived_iv_modes=self._cipher.caps.derived_iv_modes,
                         max_queue=o.queue_depth)
        rng = random.Random(o.seed)
        self._faults = {name: random.Random(rng.random())
                        for name in ("error", "lost", "nomem")}
        self._send, self._jobs = trio.open_memory_channel(float("inf"))
        self._in_ring = 0
        self._backlog: deque[tuple[CryptoRequest, float]] = deque()
        self._submitted = 0
        self._nursery: trio.Nursery | None = None       # the engine's, once run() started
        self._stats = BackendStats()
        self._latency = LatencyWindow()
        self._extra = {"busy": 0, "backlog_high_water": 0, "completed": 0, "errors_injected": 0,
                       "lost": 0, "nomem_injected": 0, "overruns": 0, "engine_busy_s": 0.0,
                       "engine_compute_cpu_s": 0.0, "engine_wait_cpu_s": 0.0}

    # --- the submitter's side ------------------------------------------------------------

    def submit(self, req: CryptoRequest) -> Status:
        self._stats.count(req)
        self._submitted += 1
        every = self.options.busy_storm_every
        storm = every and (self._submitted % every) < self.options.busy_storm_length
        job = (req, time.monotonic())
        if self._in_ring < self.options.queue_depth and not storm and not self._backlog:
            self._in_ring += 1
            self._send.send_nowait(job)
            return Status.IN_PROGRESS
        self._backlog.append(job)
        self._extra["busy"] += 1
        self._extra["backlog_high_water"] = max(self._extra["backlog_high_water"],
                                                len(self._backlog))
        if self._in_ring < self.options.queue_depth:
            # a storm with free slots: no completion will free one, so the engine looks again
            self._nursery.start_soon(self._promote_after_setup)
        return Status.BUSY

    # --- the engine's side ---------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The engine: ``channels`` tasks taking jobs from the ring.  Runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(self.options.channels):
                nursery.start_soon(self._channel)
            task_status.started()

    def _duration(self, req: CryptoRequest) -> float:
        o = self.options
        jobs = 1 if o.native_multi_du else req.n_units
        return (jobs * o.setup_us + req.n_units * o.per_unit_us) / 1e6 + \
            len(req.src) / (o.throughput_mbps * 1e6)

    async def _channel(self) -> None:
        async for req, queued in self._jobs:
            seconds = self._duration(req)
            done_at = trio.current_time() + seconds
            err = self._execute(req)        # the bytes, computed inside the simulated time
            if trio.current_time() > done_at:
                self._extra["overruns"] += 1    # computing took longer than the engine would
            await self._wait_until(done_at)
            self._extra["engine_busy_s"] += seconds
            self._in_ring -= 1
            self._promote()
            if self._faults["lost"].random() < self.options.lost_rate:
                self._extra["lost"] += 1
                continue
            self._extra["completed"] += 1
            self._latency.add(time.monotonic() - queued)
            req.callback(req, err)

    async def _wait_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` with microsecond precision.

        trio sleeps through epoll, whose timeout has millisecond resolution: good enough for
        the mock clock of the tests, far too coarse for microsecond jobs.  So the last stretch
        is spent yielding to other tasks in a loop; that CPU time is the simulation's, counted
        as ``engine_wait_cpu_s`` and left out of host CPU like the compute."""
        if hasattr(trio.lowlevel.current_clock(), "jump"):     # simulated time (tests)
            await trio.sleep_until(deadline)
            return
        if deadline - trio.current_time() > 0.002:
            await trio.sleep_until(deadline - 0.0015)
        start = time.thread_time()
        while trio.current_time() < deadline:
            await trio.lowlevel.checkpoint()
        self._extra["engine_wait_cpu_s"] += time.thread_time() - start

    def _execute(self, req: CryptoRequest) -> int:
        """Compute the request's bytes, or the error a fault calls for (0 or -errno)."""
        if req.n_units > 1 and self._faults["nomem"].random() < self.options.nomem_rate:
            self._extra["nomem_injected"] += 1
            return -errno.ENOMEM
        if self._faults["error"].random() < self.options.error_rate:
            self._extra["errors_injected"] += 1
            self._stats.add("errors")
            return -errno.EIO
        start = time.thread_time()
        self._cipher.submit(req)
        if self.options.corrupt:
            req.dst[0] ^= 0x5A
        self._extra["engine_compute_cpu_s"] += time.thread_time() - start
        return 0

    async def _promote_after_setup(self) -> None:
        await trio.sleep(self.options.setup_us / 1e6)
        self._promote()

    def _promote(self) -> None:
        """A slot came free: the oldest backlogged request enters the ring (and is told)."""
        while self._backlog and self._in_ring < self.options.queue_depth:
            job = self._backlog.popleft()
            self._in_ring += 1
            self._send.send_nowait(job)
            job[0].callback(job[0], RESTART)

    # --- reporting -----------------------------------------------------------------------

    def statistics(self) -> dict:
        stats = self._stats.as_dict()
        stats.update(self._extra, in_flight=self._in_ring + len(self._backlog),
                     backlog=len(self._backlog), **self._latency.percentiles())
        stats["engine_busy_s"] = round(stats["engine_busy_s"], 6)
        for name in ("engine_compute_cpu_s", "engine_wait_cpu_s"):
            stats[name] = round(stats[name], 6)
        return stats

    def close(self) -> None:
        """Stop the engine (jobs still in its ring or backlog are dropped: their requests
        have timed out or are being abandoned) and close its cipher."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        self._cipher.close()
