"""The crypt_convert loop: one bio's data units through the crypto backend.

Modelled on dm-crypt's ``crypt_convert``: build the requests for a bio — one per data unit
(*per_sector*) or one for the whole bio (*multi_du*) — and submit them in order:

* ``DONE``: finished; go on.
* ``IN_PROGRESS``: the backend owns it until its callback; go on.
* ``BUSY``: it sits on the backlog; stop submitting until its callback says ``RESTART``.

When every request has completed, the ones that failed (raised CryptoFailure, completed with an
error, or never completed within the timeout) are redone data unit by data unit on the software
fallback.  If the fallback fails too the bio fails with EIO: never wrong data, never a write
acknowledged that was not encrypted.  ``src`` is never modified, so a retry starts from the
original bytes.
"""

import errno

import trio

from backends.base import RESTART, Backend, CryptoFailure, CryptoRequest, Op, Status

from .errors import DeviceError
from .geometry import Geometry
from .ivgen import IvGenerator
from .stats import Stats


class _Pending:
    """The completion side of one bio (dm-crypt's convert_context): counts outstanding
    requests, records failures, and wakes the converter on RESTART and when all are done."""

    __slots__ = ("outstanding", "failed", "restarted", "restart", "finished", "submitting",
                 "closed")

    def __init__(self):
        self.outstanding: set[CryptoRequest] = set()
        self.failed: list[CryptoRequest] = []
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
            self.failed.append(req)
        if not self.outstanding and not self.submitting:
            self.finished.set()


class Converter:
    """Turns (op, first data unit, src, dst) into backend requests and sees them through."""

    def __init__(self, backend: Backend, fallback: Backend, geometry: Geometry,
                 ivgen: IvGenerator, stats: Stats, *, multi_du: bool = False,
                 completion_timeout: float = 30.0):
        self.backend = backend
        self.fallback = fallback
        self.geometry = geometry
        self.ivgen = ivgen
        self.stats = stats
        self.multi_du = multi_du
        self.completion_timeout = completion_timeout
        self.asynchronous = backend.caps.asynchronous

    def iv(self, unit: int) -> bytes:
        return self.ivgen(self.geometry.iv_sector(unit))

    def requests(self, op: Op, unit: int, src: memoryview, dst: memoryview,
                 per_sector: bool = False) -> list[CryptoRequest]:
        """The requests for one bio: one per data unit, or one in all when multi_du is on."""
        du = self.geometry.sector_size
        if self.multi_du and not per_sector:
            return [CryptoRequest(op, src, dst, self.iv(unit), du, self.geometry.iv_step,
                                  first_unit=unit)]
        return [CryptoRequest(op, src[o:o + du], dst[o:o + du], self.iv(unit + i), du,
                              first_unit=unit + i)
                for i, o in enumerate(range(0, len(src), du))]

    def convert_sync(self, op: Op, unit: int, src: memoryview, dst: memoryview) -> None:
        """The loop for synchronous backends: every request must finish as DONE."""
        failed = []
        for req in self.requests(op, unit, src, dst):
            try:
                status = self.backend.submit(req)
            except CryptoFailure:
                failed.append(req)
                continue
            if status is not Status.DONE:
                raise DeviceError(f"backend {self.backend.name} returned {status.name} but "
                                  "declares itself synchronous", errno.EIO)
        self._recover(failed)

    async def convert(self, op: Op, unit: int, src: memoryview, dst: memoryview) -> None:
        """Convert one bio; DeviceError(EIO) if neither the backend nor the fallback can."""
        if not self.asynchronous:
            self.convert_sync(op, unit, src, dst)
            return
        pending = _Pending()
        for req in self.requests(op, unit, src, dst):
            req.callback = pending.callback
            pending.outstanding.add(req)
            try:
                status = self.backend.submit(req)
            except CryptoFailure:
                pending.outstanding.discard(req)
                pending.failed.append(req)
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
                    pending.failed.append(req)
                pending.restarted, pending.restart = False, None
        pending.submitting = False
        if pending.outstanding:
            with trio.move_on_after(self.completion_timeout):
                await pending.finished.wait()
        if pending.outstanding:
            self.stats.add("timeouts", len(pending.outstanding))
            pending.failed.extend(pending.outstanding)
        pending.closed = True
        self._recover(pending.failed)

    def _recover(self, failed: list[CryptoRequest]) -> None:
        """Redo failed requests unit by unit on the software fallback, or fail with EIO."""
        for req in failed:
            self.stats.add("retries")
            self.stats.add("retried_units", req.n_units)
            for unit_req in self.requests(req.op, req.first_unit, req.src, req.dst,
                                          per_sector=True):
                try:
                    self.fallback.submit(unit_req)
                except CryptoFailure as e:
                    self.stats.add("failed_bios")
                    raise DeviceError(f"data unit {unit_req.first_unit}: {e}", errno.EIO) from None
