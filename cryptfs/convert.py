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
"""

import errno
import logging
import random

import trio

from backends.base import RESTART, Backend, CryptoFailure, CryptoRequest, Op, Status

from .errors import DeviceError
from .geometry import Geometry
from .ivgen import IV_MODES
from .spec import CipherSpec
from .stats import Stats

log = logging.getLogger(__name__)
_PLAIN_WRAP = 1 << 32


def choose_path(mode: str, spec: CipherSpec, geometry: Geometry, backend: Backend) \
        -> tuple[bool, str]:
    """Whether bios go to ``backend`` as one multi data unit request, and why (for status).

    dm-crypt's conditions: not AEAD and one key (always so here), IVs the cipher can extend —
    a counter IV mode, or one the backend derives itself — and a data unit size the backend
    takes.  A backend that advertises native multi-DU but rejects the size is logged and the
    device falls back to per-sector."""
    if mode == "per_sector":
        return False, "per_sector requested"
    counter = IV_MODES[spec.ivmode].counter
    caps = backend.caps
    if counter is None and spec.ivmode not in caps.derived_iv_modes:
        return False, (f"per_sector: IV mode {spec.ivmode} is no counter and backend "
                       f"{backend.name} cannot derive it")
    du = geometry.sector_size
    if caps.native_multi_du and caps.data_unit_sizes and du not in caps.data_unit_sizes:
        sizes = ", ".join(map(str, sorted(caps.data_unit_sizes)))
        log.warning("backend %s advertises multi data unit requests but not of %d bytes "
                    "(only %s): using per-sector requests", backend.name, du, sizes)
        return False, f"per_sector: backend {backend.name} rejects data unit size {du} ({sizes})"
    how = "derived by the backend" if counter is None else f"a {counter}-endian counter"
    native = "native" if caps.native_multi_du else "auto-split"
    return True, (f"multi_du ({native}): {spec.ivmode} IVs as {how}, step {geometry.iv_step}"
                  f"{', per-sector where plain wraps at 2^32' if spec.ivmode == 'plain' else ''}")


class _Pending:
    """The completion side of one bio (dm-crypt's convert_context): tracks outstanding
    requests, records failures, and wakes the converter on RESTART and when all are done."""

    __slots__ = ("outstanding", "failed", "restarted", "restart", "finished", "submitting",
                 "closed")

    def __init__(self):
        self.outstanding: set[CryptoRequest] = set()
        self.failed: list[tuple[CryptoRequest, int]] = []
        self.restarted = False
        self.restart: trio.Event | None = None
        self.finished = trio.Event()
        self.submitting = True      # the converter's own reference: no "finished" before the end
        self.closed = False

    def callback(self, req: CryptoRequest, err: int) -> None:
        if self.closed or req not in self.outstanding:
            return      # a late or duplicate completion: already retried or counted
        if err == RESTART:
            self.restarted = True
            if self.restart is not None:
                self.restart.set()
            return
        self.outstanding.discard(req)
        if err:
            self.failed.append((req, -err))
        if not self.outstanding and not self.submitting:
            self.finished.set()


class Converter:
    """Turns (op, first data unit, src, dst) into backend requests and sees them through."""

    def __init__(self, backend: Backend, fallback: Backend, spec: CipherSpec,
                 key: bytes | bytearray, geometry: Geometry, stats: Stats, *,
                 mode: str = "per_sector", completion_timeout: float = 30.0,
                 alloc_failure_rate: float = 0.0, seed: int = 0):
        self.backend = backend
        self.fallback = fallback
        self.geometry = geometry
        self.stats = stats
        self.completion_timeout = completion_timeout
        self.asynchronous = backend.caps.asynchronous
        self.multi_du, self.reason = choose_path(mode, spec, geometry, backend)
        final = IV_MODES[spec.ivmode].generator(key, spec.ivopts)
        # A backend that derives this IV mode itself is handed plain64 counters, always.
        derives = spec.ivmode in backend.caps.derived_iv_modes and \
            IV_MODES[spec.ivmode].counter is None
        self.backend_iv = IV_MODES["plain64"].generator(key, None) if derives else final
        self.fallback_iv = final
        self.plain_wraps = spec.ivmode == "plain"
        self.alloc_failure_rate = alloc_failure_rate
        self._random = random.Random(seed)

    def requests(self, op: Op, unit: int, src: memoryview, dst: memoryview, *,
                 per_sector: bool, fallback: bool = False) -> list[CryptoRequest]:
        """The requests for one bio: one per data unit, or one for the bio."""
        du, g = self.geometry.sector_size, self.geometry
        iv = self.fallback_iv if fallback else self.backend_iv
        if not per_sector:
            return [CryptoRequest(op, src, dst, iv(g.iv_sector(unit)), du, g.iv_step,
                                  first_unit=unit)]
        return [CryptoRequest(op, src[o:o + du], dst[o:o + du], iv(g.iv_sector(unit + i)), du,
                              first_unit=unit + i)
                for i, o in enumerate(range(0, len(src), du))]

    def _multi_du_for(self, unit: int, count: int, retried: bool) -> bool:
        """Whether this bio goes as one request: multi_du on, not a retry, the multi-DU
        buffers obtained (the injectable memory pressure), and — for ``plain`` — no 32-bit
        wrap inside the bio, where a 128-bit counter would carry and dm-crypt's IV does not."""
        if not self.multi_du or retried or count < 2:
            return False
        if self.plain_wraps:
            g = self.geometry
            first = g.iv_sector(unit) % _PLAIN_WRAP
            if first + (count - 1) * g.iv_step >= _PLAIN_WRAP:
                self.stats.add("plain_wrap_per_sector")
                return False
        if self.alloc_failure_rate and self._random.random() < self.alloc_failure_rate:
            self.stats.add("multi_du_alloc_failures")
            return False
        return True

    def convert_sync(self, op: Op, unit: int, src: memoryview, dst: memoryview,
                     retried: bool = False) -> None:
        """The loop for synchronous backends: every request must finish as DONE."""
        multi = self._multi_du_for(unit, len(src) // self.geometry.sector_size, retried)
        failed = []
        for req in self.requests(op, unit, src, dst, per_sector=not multi):
            try:
                status = self.backend.submit(req)
            except MemoryError:
                failed.append((req, errno.ENOMEM))
                continue
            except CryptoFailure as e:
                failed.append((req, e.errno))
                continue
            if status is not Status.DONE:
                raise DeviceError(f"backend {self.backend.name} returned {status.name} but "
                                  "declares itself synchronous", errno.EIO)
        if self._memory_pressure(multi, failed):
            self.convert_sync(op, unit, src, dst, retried=True)
            return
        self._recover(failed)

    async def convert(self, op: Op, unit: int, src: memoryview, dst: memoryview,
                      retried: bool = False) -> None:
        """Convert one bio; DeviceError(EIO) if neither the backend nor the fallback can."""
        if not self.asynchronous:
            self.convert_sync(op, unit, src, dst, retried)
            return
        multi = self._multi_du_for(unit, len(src) // self.geometry.sector_size, retried)
        pending = _Pending()
        for req in self.requests(op, unit, src, dst, per_sector=not multi):
            req.callback = pending.callback
            pending.outstanding.add(req)
            try:
                status = self.backend.submit(req)
            except (MemoryError, CryptoFailure) as e:
                pending.outstanding.discard(req)
                pending.failed.append((req, getattr(e, "errno", errno.ENOMEM)))
                continue
            if status is Status.DONE:
                pending.outstanding.discard(req)
            elif status is Status.BUSY:
                self.stats.add("busy")
                if not pending.restarted:
                    pending.restart = trio.Event()
                    with trio.move_on_after(self.completion_timeout):
                        await pending.restart.wait()
                if not pending.restarted and req in pending.outstanding:
                    self.stats.add("timeouts")      # never left the backlog: give up on it
                    pending.outstanding.discard(req)
                    pending.failed.append((req, errno.ETIMEDOUT))
                pending.restarted, pending.restart = False, None
        pending.submitting = False
        if pending.outstanding:
            with trio.move_on_after(self.completion_timeout):
                await pending.finished.wait()
        if pending.outstanding:
            self.stats.add("timeouts", len(pending.outstanding))
            pending.failed.extend((req, errno.ETIMEDOUT) for req in pending.outstanding)
        pending.closed = True
        if self._memory_pressure(multi, pending.failed):
            await self.convert(op, unit, src, dst, retried=True)
            return
        self._recover(pending.failed)

    def _memory_pressure(self, multi: bool, failed: list[tuple[CryptoRequest, int]]) -> bool:
        """A multi-DU request that ran out of memory: redo the bio per sector (once)."""
        if multi and any(err == errno.ENOMEM for _, err in failed):
            self.stats.add("multi_du_retried_bios")
            return True
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
