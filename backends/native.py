"""The native core, :mod:`backends._native` (``backends/_native.c``), if it was built.

The package's build compiles it against OpenSSL's libcrypto; where that could not happen (no
compiler or no OpenSSL headers), ``AVAILABLE`` is False, ``UNAVAILABLE`` says why, and
``multidu`` runs on its pure-Python path (:mod:`backends.vectorised`) instead.

A core is keyed once (:func:`keyed_core`); ``core.crypt(encrypt, src, dst, iv, data_unit_size,
iv_step, threads)`` converts a whole multi data unit request — IVs as the contract of
:mod:`backends.base` defines them — with the GIL released, thread-safe, and raises
``NativeError``, a :class:`~backends.base.CryptoFailure`, if OpenSSL fails.
"""

from cryptfs.spec import CipherSpec

from .base import CryptoFailure

try:
    from . import _native
except ImportError as e:
    _native = None
    UNAVAILABLE: str | None = f"the native core is not built ({e})"
else:
    UNAVAILABLE = None
AVAILABLE = _native is not None


def keyed_core(spec: CipherSpec, key: bytes | bytearray):
    """A native core for ``spec`` keyed with ``key``; CryptoFailure if it cannot be."""
    if _native is None:
        raise CryptoFailure(UNAVAILABLE)
    try:
        return _native.Core(spec.mode, key, spec.ivmode, spec.ivopts)
    except ValueError as e:
        raise CryptoFailure(f"AES-{spec.mode.upper()} refuses this key: {e}") from None


def openssl_version() -> str | None:
    return _native.openssl_version if _native else None
