"""The crypt_convert loop: one bio's data units through the crypto backend.

Modelled on dm-crypt's ``crypt_convert``: build the requests for a bio — one per data unit
(*per_sector*) or one for the whole bio (*multi_du*) — and submit them in order:

* ``DONE``: finished; go on.
* ``IN_PROGRESS``: the backend owns it until its callback; go on.
* ``BUSY``: it sits on the backlog; stop submitting until its callback says ``RESTART``.

When every request has completed:

* a multi data unit request that failed for lack of memory (MemoryError, ENOMEM — including
  the injectable allocation failure that stands for the kernel's scatterlist allocation) makes
  the whole bio go again on the per-sector path, once: a retried bio never re-enters multi_du,
  so the loop ends even with memory exhausted (the review of the seed series);
* any other failed request (raised CryptoFailure, completed with an error, or never completed
  within the timeout) is redone unit by unit on the software fallback.

If the fallback fails too the bio fails with EIO: never wrong data, never a write acknowledged
that was not encrypted.  ``src`` is never modified, so a retry starts from the original bytes.

There is one loop for every backend (:meth:`Converter._loop`), driven two ways: synchronously
(:meth:`Converter.convert`, in whichever thread owns the bio — a synchronous backend must
answer DONE, anything else fails the bio: a broken contract) and, for asynchronous backends, by
a trio task (:meth:`Converter.convert_async`), which awaits the RESTART and the completions the
backend's own task delivers — on the same thread, with no hand-off.
"""

import errno
import logging
import random
from collections.abc import Generator

import trio

from cryptfs.backends.base import RESTART, Backend, CryptoFailure, CryptoRequest, Op, Status
from cryptfs.core.geometry import Geometry
from cryptfs.core.stats import Stats
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.spec import CipherSpec
from cryptfs.errors import DeviceError

log = logging.getLogger(__name__)


def choose_path(mode: str, spec: CipherSpec, geometry: Geometry, backend: Backend) \
        -> tuple[bool, str]:
    """Whether bios go to ``backend`` as one multi data unit request, and why (for status).

    dm-crypt's conditions: not AEAD and one key (always so here), IVs the cipher can extend —
    a counter IV mode, or one the backend derives itself — and a data unit size the backend
    takes.  A backend that advertises native multi-DU but rejects the size is logged and the
    device falls back to per-sector."""
    if mode == "per_sector":
        return False, "per_sector requested"
    ivmode, caps = IV_MODES[spec.ivmode], backend.caps
    derived = spec.ivmode in caps.derived_iv_modes
    if ivmode.byteorder is None and not derived:
        return False, (f"per_sector: IV mode {spec.ivmode} is no counter and backend "
                       f"{backend.name} cannot derive it")
    du = geometry.sector_size
    if caps.native_multi_du and caps.data_unit_sizes and du not in caps.data_unit_sizes:
        sizes = ", ".join(map(str, sorted(caps.data_unit_sizes)))
        log.warning("backend %s advertises multi data unit requests but not of %d bytes "
                    "(only %s): using per-sector requests", backend.name, du, sizes)
        return False, f"per_sector: backend {backend.name} rejects data unit size {du} ({sizes})"
    if ivmode.byteorder is None:
        how = "derived by the backend"
    else:
        how = f"a {ivmode.byteorder}-endian counter"
        if ivmode.counter_bits < 128:
            how += (f" wrapping at 2^{ivmode.counter_bits} (derived by the backend)" if derived
                    else f", per-sector where {spec.ivmode} wraps at 2^{ivmode.counter_bits}")
    native = "native" if caps.native_multi_du else "auto-split"
    return True, f"multi_du ({native}): {spec.ivmode} IVs as {how}, step {geometry.iv_step}"


def _errno_of(failure: BaseException) -> int:
    """The errno a synchronous failure stands for (an asynchronous one carries its own)."""
    return errno.ENOMEM if isinstance(failure, MemoryError) else failure.errno


class _Pending:
    """The completion side of one bio on an asynchronous backend (dm-crypt's
    convert_context): the requests still out, the failures, and the wake-ups — on RESTART and
    when the last completes.  Callbacks come from the backend's task, on the trio thread."""

    __slots__ = ("outstanding", "failed", "restarted", "wake", "closed")

    def __init__(self, failed: list):
        self.outstanding: set[CryptoRequest] = set()
        self.failed = failed
        self.restarted = False
        self.wake: trio.Event | None = None
        self.closed = False

    def track(self, req: CryptoRequest) -> None:
        """Before submitting: a completion may come before submit returns."""
        req.callback = self.callback
        self.outstanding.add(req)

    def settle(self, req: CryptoRequest, err: int = 0) -> None:
        """Submit's own answer: DONE (err 0) or a synchronous failure."""
        self.outstanding.discard(req)
        if err:
            self.failed.append((req, err))

    def callback(self, req: CryptoRequest, err: int) -> None:
        if self.closed or req not in self.outstanding:
            return      # a late or duplicate completion: already given up on and redone
        if err == RESTART:
            self.restarted = True
        else:
            self.outstanding.discard(req)
            if err:
                self.failed.append((req, -err))
        if self.wake is not None:
            self.wake.set()

    async def _wait(self, done, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while not done():
                self.wake = trio.Event()
                await self.wake.wait()
        self.wake = None
        return done()

    async def wait_restart(self, req: CryptoRequest, timeout: float) -> bool:
        """After BUSY: wait until ``req`` leaves the backlog.  False if it did not in time —
        it is then given up on (failed with ETIMEDOUT)."""
        left = await self._wait(lambda: self.restarted or req not in self.outstanding, timeout)
        self.restarted = False
        if not left:
            self.outstanding.discard(req)
            self.failed.append((req, errno.ETIMEDOUT))
        return left

    async def wait_all(self, timeout: float) -> int:
        """Wait for every completion; give up on the rest after ``timeout`` (ETIMEDOUT): how
        many that were.  Completions after this are ignored."""
        await self._wait(lambda: not self.outstanding, timeout)
        late = len(self.outstanding)
        self.failed.extend((req, errno.ETIMEDOUT) for req in self.outstanding)
        self.outstanding.clear()
        self.closed = True
        return late


#: what the loop yields when it must wait: a backlogged request's RESTART, or (None) the end
_Wait = CryptoRequest | None


class Converter:
    """Turns (op, first data unit, src, dst) into backend requests and sees them through."""

    def __init__(self, backend: Backend, fallback: Backend, spec: CipherSpec,
                 key: bytes | bytearray, geometry: Geometry, stats: Stats, *,
                 mode: str = "per_sector", completion_timeout: float = 30.0,
                 alloc_failure_rate: float = 0.0, seed: int = 0):
        self.backend = backend
        self.fallback = fallback
        self.geometry = geometry
        self._du, self._iv_step = geometry.sector_size, geometry.iv_step
        self.stats = stats
        self.completion_timeout = completion_timeout
        self.asynchronous = backend.caps.asynchronous
        self.multi_du, self.reason = choose_path(mode, spec, geometry, backend)
        ivmode = IV_MODES[spec.ivmode]
        final = ivmode.generator(key, spec.ivopts, spec.cipher)
        derived = spec.ivmode in backend.caps.derived_iv_modes
        # A backend that derives a non-counter IV mode itself is handed plain64 counters.
        self.backend_iv = IV_MODES["plain64"].generator(key, None) \
            if derived and ivmode.byteorder is None else final
        self.fallback_iv = final
        # A counter that wraps before 2^128 cannot be extended by the generic 128-bit counter
        # past its wrap: such bios go per sector, unless the backend derives the wrap itself.
        self._wrap = 0 if derived or ivmode.byteorder is None or ivmode.counter_bits == 128 \
            else 1 << ivmode.counter_bits
        self.alloc_failure_rate = alloc_failure_rate
        self._random = random.Random(seed)

    def requests(self, op: Op, unit: int, src: memoryview, dst: memoryview, *,
                 per_sector: bool, fallback: bool = False) -> list[CryptoRequest]:
        """The requests for one bio: one per data unit, or one for the bio."""
        du, iv_sector = self._du, self.geometry.iv_sector
        iv = self.fallback_iv if fallback else self.backend_iv
        if not per_sector:
            return [CryptoRequest(op, src, dst, iv(iv_sector(unit)), du, self._iv_step, None,
                                  unit)]
        return [CryptoRequest(op, src[o:o + du], dst[o:o + du], iv(iv_sector(unit + i)),
                              du, 1, None, unit + i)
                for i, o in enumerate(range(0, len(src), du))]

    def _multi_du_for(self, unit: int, count: int, retried: bool) -> bool:
        """Whether this bio goes as one request: multi_du on, not a retry, the multi-DU
        buffers obtained (the injectable memory pressure), and no counter wrap inside the bio
        that the backend would not derive (``plain``'s 32-bit wrap, where a 128-bit counter
        would carry and dm-crypt's IV does not)."""
        if not self.multi_du or retried or count < 2:
            return False
        if self._wrap:
            first = self.geometry.iv_sector(unit) % self._wrap
            if first + (count - 1) * self._iv_step >= self._wrap:
                self.stats.add("plain_wrap_per_sector")
                return False
        if self.alloc_failure_rate and self._random.random() < self.alloc_failure_rate:
            self.stats.add("multi_du_alloc_failures")
            return False
        return True

    def _loop(self, op: Op, unit: int, src: memoryview, dst: memoryview, multi: bool,
              pending: _Pending | None) -> Generator[_Wait, None, list]:
        """The crypt_convert loop proper: submit the bio's requests in order.  Yields what it
        must wait for (an asynchronous backend's RESTART after BUSY; then its completions);
        returns the failed requests as (request, errno)."""
        failed = [] if pending is None else pending.failed
        submit = self.backend.submit
        for req in self.requests(op, unit, src, dst, per_sector=not multi):
            if pending is not None:
                pending.track(req)
            try:
                status = submit(req)
            except (MemoryError, CryptoFailure) as e:
                if pending is None:
                    failed.append((req, _errno_of(e)))
                else:
                    pending.settle(req, _errno_of(e))
                continue
            if status is Status.DONE:
                if pending is not None:
                    pending.settle(req)
            elif pending is None:
                raise DeviceError(f"backend {self.backend.name} returned {status.name} but "
                                  "declares itself synchronous", errno.EIO)
            elif status is Status.BUSY:
                self.stats.add("busy")
                yield req
        if pending is not None and pending.outstanding:
            yield None
        return failed

    def convert(self, op: Op, unit: int, src: memoryview, dst: memoryview,
                retried: bool = False) -> None:
        """Convert one bio on a synchronous backend; DeviceError(EIO) if neither the backend
        nor the fallback can."""
        if self.asynchronous:
            raise RuntimeError(f"backend {self.backend.name} is asynchronous: convert_async")
        multi = self._multi_du_for(unit, len(src) // self._du, retried)
        loop = self._loop(op, unit, src, dst, multi, None)
        try:
            next(loop)          # a synchronous backend never waits, and DONE never yields
        except StopIteration as end:
            failed = end.value
        if failed and self._finish(failed, multi):
            self.convert(op, unit, src, dst, retried=True)

    async def convert_async(self, op: Op, unit: int, src: memoryview, dst: memoryview,
                            retried: bool = False) -> None:
        """Convert one bio on any backend from a trio task: waits for an asynchronous
        backend's RESTART and completions (each bounded by ``completion_timeout``)."""
        multi = self._multi_du_for(unit, len(src) // self._du, retried)
        pending = _Pending([]) if self.asynchronous else None
        loop = self._loop(op, unit, src, dst, multi, pending)
        try:
            waiting = next(loop)
            while True:
                if waiting is not None:
                    if not await pending.wait_restart(waiting, self.completion_timeout):
                        self.stats.add("timeouts")      # never left the backlog
                else:
                    late = await pending.wait_all(self.completion_timeout)
                    if late:
                        self.stats.add("timeouts", late)
                waiting = loop.send(None)
        except StopIteration as end:
            failed = end.value
        if failed and self._finish(failed, multi):
            await self.convert_async(op, unit, src, dst, retried=True)

    def _finish(self, failed: list[tuple[CryptoRequest, int]], multi: bool) -> bool:
        """After the loop: True if memory pressure sends the bio again per sector (once);
        else the failed requests are redone on the software fallback (or EIO)."""
        if multi and any(err == errno.ENOMEM for _, err in failed):
            self.stats.add("multi_du_retried_bios")
            return True
        self._recover(failed)
        return False

    def _recover(self, failed: list[tuple[CryptoRequest, int]]) -> None:
        """Redo failed requests unit by unit on the software fallback, or fail with EIO."""
        for req, _ in failed:
            self.stats.add("retries")
            self.stats.add("retried_units", req.n_units)
            for unit_req in self.requests(req.op, req.first_unit, req.src, req.dst,
                                          per_sector=True, fallback=True):
                try:
                    self.fallback.submit(unit_req)
                except (CryptoFailure, MemoryError) as e:
                    self.stats.add("failed_bios")
                    raise DeviceError(f"data unit {unit_req.first_unit}: {e}", errno.EIO) from None

