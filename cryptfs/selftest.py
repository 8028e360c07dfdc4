"""A known-answer self-test for a backend before it serves (as the kernel's testmgr does):
encrypt and decrypt a fixed pattern through the backend's real request path and compare with
the software backend.  An engine that computes wrong bytes, fails or never answers is refused.
"""

import errno

from backends.base import CryptoFailure, Op
from backends.software import SoftwareBackend

from .convert import Converter
from .errors import DeviceError
from .geometry import Geometry
from .spec import CipherSpec
from .stats import Stats

UNITS = 8


class _NoFallback:
    """Stands in for the software fallback: the self-test must not be rescued by it."""
    name = "none"

    def submit(self, req):
        raise CryptoFailure("the backend failed the request", errno.EIO)


async def known_answer(backend, spec: CipherSpec, key, geometry: Geometry, mode: str,
                       timeout: float) -> str | None:
    """None if ``backend`` computes what software computes, else what went wrong."""
    size = UNITS * geometry.sector_size
    plaintext = memoryview(bytes((i * 7 + 3) % 251 for i in range(size)))
    expected = bytearray(size)
    reference = Converter(SoftwareBackend(spec, key), _NoFallback(), spec, key, geometry,
                          Stats(), mode="per_sector")
    reference.convert(Op.ENCRYPT, 0, plaintext, memoryview(expected))
    tested = Converter(backend, _NoFallback(), spec, key, geometry, Stats(), mode=mode,
                       completion_timeout=timeout)
    ciphertext, decrypted = bytearray(size), bytearray(size)
    try:
        await tested.convert_async(Op.ENCRYPT, 0, plaintext, memoryview(ciphertext))
        await tested.convert_async(Op.DECRYPT, 0, memoryview(expected), memoryview(decrypted))
    except DeviceError as e:
        return f"requests failed ({e})"
    if ciphertext != expected:
        return "wrong ciphertext for the known answer"
    if decrypted != plaintext:
        return "wrong plaintext for the known answer"
    return None
