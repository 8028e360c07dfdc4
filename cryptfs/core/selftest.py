"""A known-answer self-test for a backend before it serves (as the kernel's testmgr does):
encrypt and decrypt a fixed pattern through the backend's real request path and compare with
the software backend following the one IV table (:mod:`cryptfs.crypto.ivgen`).  A backend that
computes wrong bytes — a wrong C table included —, fails or never answers is refused.

The pattern sits across IV sector 2^32, where ``plain`` wraps and 64-bit arithmetic shows.
It costs microseconds; every backend runs it when a device opens (:func:`check` for
synchronous backends, :func:`check_async` for asynchronous ones, on the trio thread).
"""

import errno

from cryptfs.backends.base import Backend, CryptoFailure, Op
from cryptfs.backends.software import SoftwareBackend
from cryptfs.core.convert import Converter
from cryptfs.core.geometry import Geometry
from cryptfs.core.stats import Stats
from cryptfs.crypto.spec import CipherSpec
from cryptfs.errors import DeviceError

UNITS = 8


class _NoFallback:
    """Stands in for the software fallback: the self-test must not be rescued by it."""
    name = "none"

    def submit(self, req):
        raise CryptoFailure("the backend failed the request", errno.EIO)


class _Case:
    """The known answer, and the converter under test."""

    def __init__(self, backend: Backend, spec: CipherSpec, key, geometry: Geometry, mode: str,
                 timeout: float):
        size = UNITS * geometry.sector_size
        self.first = max(0, (1 << 32) // geometry.iv_step - UNITS // 2)
        self.plaintext = memoryview(bytes((i * 7 + 3) % 251 for i in range(size)))
        self.expected = bytearray(size)
        reference = Converter(SoftwareBackend(spec, key), _NoFallback(), spec, key, geometry,
                              Stats(), mode="per_sector")
        reference.convert(Op.ENCRYPT, self.first, self.plaintext, memoryview(self.expected))
        self.tested = Converter(backend, _NoFallback(), spec, key, geometry, Stats(), mode=mode,
                                completion_timeout=timeout)
        self.ciphertext, self.decrypted = bytearray(size), bytearray(size)

    def steps(self):
        """(op, src, dst) of the two conversions to run."""
        return [(Op.ENCRYPT, self.plaintext, memoryview(self.ciphertext)),
                (Op.DECRYPT, memoryview(self.expected), memoryview(self.decrypted))]

    def verdict(self) -> str | None:
        if self.ciphertext != self.expected:
            return "wrong ciphertext for the known answer"
        if self.decrypted != self.plaintext:
            return "wrong plaintext for the known answer"
        return None


def check(backend: Backend, spec: CipherSpec, key, geometry: Geometry, mode: str) -> str | None:
    """None if the synchronous ``backend`` computes what software computes, else what went
    wrong."""
    case = _Case(backend, spec, key, geometry, mode, 0.0)
    try:
        for op, src, dst in case.steps():
            case.tested.convert(op, case.first, src, dst)
    except DeviceError as e:
        return f"requests failed ({e})"
    return case.verdict()


async def check_async(backend: Backend, spec: CipherSpec, key, geometry: Geometry, mode: str,
                      timeout: float) -> str | None:
    """:func:`check` for an asynchronous backend whose task is running."""
    case = _Case(backend, spec, key, geometry, mode, timeout)
    try:
        for op, src, dst in case.steps():
            await case.tested.convert_async(op, case.first, src, dst)
    except DeviceError as e:
        return f"requests failed ({e})"
    return case.verdict()
