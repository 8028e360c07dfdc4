"""The native core, :mod:`backends._native` (``backends/_native.c``), if it was built.

The package's build compiles it against OpenSSL's libcrypto; where that could not happen (no
compiler or no OpenSSL headers), ``AVAILABLE`` is False, ``UNAVAILABLE`` says why, and
``multidu`` runs on its pure-Python path (:mod:`backends.vectorised`) instead.
"""

from cryptfs.spec import CipherSpec

from .base import CryptoFailure, Op

try:
    from . import _native
except ImportError as e:
    _native = None
    UNAVAILABLE: str | None = f"the native core is not built ({e})"
else:
    UNAVAILABLE = None
AVAILABLE = _native is not None


class NativeCipher:
    """One keyed native core: ``crypt`` converts a whole multi data unit request (IVs as the
    contract of :mod:`backends.base` defines them) with the GIL released; thread-safe."""

    def __init__(self, spec: CipherSpec, key: bytes | bytearray):
        if _native is None:
            raise CryptoFailure(UNAVAILABLE)
        try:
            self._core = _native.Core(spec.mode, key, spec.ivmode, spec.ivopts)
        except ValueError as e:
            raise CryptoFailure(f"AES-{spec.mode.upper()} refuses this key: {e}") from None

    def crypt(self, op: Op, src, dst, iv: bytes, du: int, step: int, threads: int = 1) -> None:
        """Convert ``src`` into ``dst``; CryptoFailure if OpenSSL fails (dst is then garbage)."""
        try:
            self._core.crypt(op is Op.ENCRYPT, src, dst, iv, du, step, threads)
        except _native.NativeError as e:
            raise CryptoFailure(str(e)) from None

    def close(self) -> None:
        """Free and cleanse the key schedules, once calls in flight are done."""
        self._core.close()


def openssl_version() -> str | None:
    return _native.openssl_version if _native else None
