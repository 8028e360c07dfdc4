"""The backend contract: dm-crypt's view of an skcipher, in Python.

A backend is created once per open device with the cipher spec and the volume key (the
``setkey`` of a tfm) and then receives :class:`CryptoRequest` objects through :meth:`submit`:

* ``Status.DONE``: the request finished synchronously; its callback is **not** called.
* ``Status.IN_PROGRESS``: accepted; the callback is called later, exactly once, with the result.
* ``Status.BUSY``: the backend's queue is full and the request went on its backlog
  (``CRYPTO_TFM_REQ_MAY_BACKLOG``): the callback is first called with ``-EINPROGRESS`` when the
  request leaves the backlog — the submitter's signal to continue — and later with the result.

A synchronous failure is raised as :class:`CryptoFailure`; an asynchronous one is a callback
with a negative errno.  Either way the request's ``dst`` must not be trusted.

A request covers ``n_units = len(src) // data_unit_size`` data units.  The IV of unit ``i`` is
``iv`` read as a counter of its own width (128 bits; 64 for the 64-bit block ciphers, whose IV
is one 8-byte block) plus ``i * iv_step`` (little-endian for the ``plain``/``plain64`` IV
modes, big-endian for ``plain64be``); :func:`split_units` does that derivation for backends
that have no native multi data unit support (the crypto core's auto-splitter).
"""

import enum
import errno
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

#: What a callback receives when its request leaves the backlog (the kernel's -EINPROGRESS).
RESTART = -errno.EINPROGRESS


class Op(enum.Enum):
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"


class Status(enum.Enum):
    DONE = 0
    IN_PROGRESS = 1
    BUSY = 2


class CryptoFailure(Exception):
    """A request failed synchronously; ``errno`` is what an async completion would carry."""

    def __init__(self, message: str, errno_: int = errno.EIO):
        super().__init__(message)
        self.errno = errno_


class Unavailable(CryptoFailure):
    """The backend cannot run on this installation (its compiled part is not built); the
    stack serves on ``software`` instead and says why."""


@dataclass(slots=True, eq=False)
class CryptoRequest:
    op: Op
    src: memoryview
    dst: memoryview                   # may be src itself (in place)
    iv: bytes                         # IV of the first data unit
    data_unit_size: int
    iv_step: int = 1
    callback: Callable[["CryptoRequest", int], None] | None = None
    first_unit: int = 0               # device data unit of src[0]: for retries and stats only

    @property
    def n_units(self) -> int:
        return len(self.src) // self.data_unit_size


@dataclass(frozen=True)
class Caps:
    native_multi_du: bool = False     # one cipher pass per request, not per data unit
    asynchronous: bool = False        # may return IN_PROGRESS / BUSY
    #: IV modes whose per-unit IVs the backend derives itself in multi data unit requests,
    #: beyond the counter modes every backend takes through the auto-splitter.
    derived_iv_modes: frozenset[str] = frozenset()
    #: data unit sizes the native path takes (None: all of 512..4096).
    data_unit_sizes: frozenset[int] | None = None
    max_queue: int | None = None      # ring slots of an asynchronous backend


class Backend(Protocol):
    name: str
    caps: Caps

    def submit(self, req: CryptoRequest) -> Status: ...

    def statistics(self) -> dict: ...

    def close(self) -> None:
        """Wipe key material and release resources; the backend is unusable afterwards."""


def split_units(req: CryptoRequest,
                byteorder: str | None) -> Iterator[tuple[bytes, memoryview, memoryview]]:
    """The auto-splitter: yield ``(iv, src, dst)`` for each data unit of ``req``.

    No per-unit request objects or callbacks; the IV is derived as the contract says, with the
    counter in ``byteorder`` — None for IV modes that are no counter, which then only take
    single-unit requests (CryptoFailure otherwise).
    """
    du = req.data_unit_size
    if req.n_units == 1:
        yield req.iv, req.src, req.dst
        return
    if byteorder is None:
        raise CryptoFailure("multi data unit request for an IV mode that is not a counter")
    base, width = int.from_bytes(req.iv, byteorder), len(req.iv)
    mask = (1 << 8 * width) - 1
    for i in range(req.n_units):
        iv = ((base + i * req.iv_step) & mask).to_bytes(width, byteorder)
        yield iv, req.src[i * du:(i + 1) * du], req.dst[i * du:(i + 1) * du]


class BackendStats:
    """Counters every backend keeps, safe to bump from any thread; ``as_dict`` is what stats
    and status show."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = self.data_units = self.bytes = self.errors = 0
        self.extra: dict[str, int] = {}

    def count(self, req: CryptoRequest) -> None:
        with self._lock:
            self.requests += 1
            self.data_units += len(req.src) // req.data_unit_size
            self.bytes += len(req.src)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            if name == "errors":
                self.errors += n
            else:
                self.extra[name] = self.extra.get(name, 0) + n

    def as_dict(self) -> dict:
        with self._lock:
            return {"requests": self.requests, "data_units": self.data_units,
                    "bytes": self.bytes, "errors": self.errors, **self.extra}

