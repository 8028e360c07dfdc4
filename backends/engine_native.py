"""``engine`` on the native plane: the simulated engine in C (``backends/engine.c``).

The trio plane runs the engine's Python model (:mod:`cryptfs.backends.engine`); the native
plane runs this one, with the same options and meanings, its host side at C cost: the plane
(``cryptfs/fuse/offload.c``) submits to it and is completed from its threads without Python.
This object keys the core the engine computes with, owns the engine, hands it to the plane
(:meth:`capsule`) and reports its counters.  Its :meth:`submit` waits for the completion — a
synchronous view of the engine for the known-answer self-test at open and for tests, never the
data path.

The engine's threads start on first use and :meth:`stop` ends them: threads do not survive a
fork, so a daemon that detaches stops the engine it self-tested and serves on a fresh one.
"""

from dataclasses import asdict

from cryptfs.backends import native
from cryptfs.backends.base import Caps, CryptoRequest, Op, Status, Unavailable
from cryptfs.backends.engine import EngineOptions
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.spec import CipherSpec


class NativeEngine:
    name = "engine"
    Options = EngineOptions

    def __init__(self, spec: CipherSpec, key: bytes | bytearray,
                 options: EngineOptions | None = None, timeout: float = 30.0):
        """``timeout``: seconds :meth:`submit` waits for a completion.  Unavailable where the
        core is not built."""
        if native.UNAVAILABLE:
            raise Unavailable(native.UNAVAILABLE)
        self.options = options or EngineOptions()
        self.core = native.keyed_core(spec, key)
        self._engine = None
        self.caps = Caps(native_multi_du=self.options.native_multi_du,
                         derived_iv_modes=native.DERIVED_IV_MODES,
                         max_queue=self.options.queue_depth)
        # A request's IV is its first unit's IV sector as the IV table writes it: a counter
        # in its byte order, the plain64 counter for the modes the core derives.
        self._byteorder = IV_MODES[spec.ivmode].byteorder or "little"
        self.timeout = timeout
        self.threads, self.split_bytes = 1, 0       # the engine's channels do the crypto

    def submit(self, req: CryptoRequest) -> Status:
        """Through the engine, waited for: DONE, or CryptoFailure with the completion's errno
        (ETIMEDOUT when none came within ``timeout``)."""
        self._started().crypt(req.op is Op.ENCRYPT, req.src, req.dst,
                           int.from_bytes(req.iv, self._byteorder), req.data_unit_size,
                           req.iv_step, self.timeout)
        return Status.DONE

    def _started(self):
        if self._engine is None:
            self._engine = native.engine(self.core, **asdict(self.options))
        return self._engine

    def capsule(self):
        """The engine for the native plane (``_plane.Session(engine_capsule=...)``)."""
        return self._started().capsule()

    def stop(self) -> None:
        """End the engine's threads (a user of :meth:`capsule` keeps its engine running)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def statistics(self) -> dict:
        counters = self._engine.statistics() if self._engine is not None else {}
        return {**counters, "implementation": "C (backends/engine.c)"}

    def close(self) -> None:
        self.stop()
        self.core.close()
