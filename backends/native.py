"""The native core, :mod:`cryptfs.backends._native` (``backends/_native.c`` over
``backends/core.c``), if it was built.

The package's build compiles it against OpenSSL's libcrypto; where that could not happen (no
compiler or no OpenSSL headers), ``UNAVAILABLE`` says why and ``multidu`` is unavailable: the
stack serves on ``software`` and says so.

A core is keyed once (:func:`keyed_core`); ``core.crypt(encrypt, src, dst, iv, data_unit_size,
iv_step, threads)`` converts a whole multi data unit request — IVs as the contract of
:mod:`cryptfs.backends.base` defines them — with the GIL released, thread-safe, and raises
``NativeError``, a :class:`~cryptfs.backends.base.CryptoFailure`, if OpenSSL fails.
"""

from cryptfs.backends.base import CryptoFailure, Unavailable
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.spec import CipherSpec

try:
    from cryptfs.backends import _native
except ImportError as e:
    _native = None
    UNAVAILABLE: str | None = f"the native core is not built ({e})"
else:
    UNAVAILABLE = None

#: The IV modes whose per-unit IVs the core derives itself in one multi data unit request:
#: every mode of the table that is not a full 128-bit counter (the core implements each one;
#: the known-answer self-test at open checks it against the table).
DERIVED_IV_MODES = frozenset(name for name, mode in IV_MODES.items()
                             if mode.byteorder is None or mode.counter_bits < 128)


def keyed_core(spec: CipherSpec, key: bytes | bytearray):
    """A native core for ``spec`` keyed with ``key``; Unavailable where the core is not built
    or its OpenSSL lacks ESSIV's hash (the software path has every hash cryptfs takes),
    CryptoFailure if the key is refused."""
    if _native is None:
        raise Unavailable(UNAVAILABLE)
    if spec.ivmode == "essiv" and not _native.has_digest(spec.ivopts):
        raise Unavailable(f"the native core's OpenSSL has no {spec.ivopts} for ESSIV")
    try:
        return _native.Core(spec.chain, key, spec.ivmode, spec.ivopts)
    except ValueError as e:
        raise CryptoFailure(f"{spec} refuses this key: {e}") from None


def engine(core, **options):
    """A running simulated engine (backends/engine.c) computing with ``core``; ``options``:
    EngineOptions' fields.  CryptoFailure if the engine refuses them."""
    try:
        return _native.Engine(core, **options)
    except ValueError as e:
        raise CryptoFailure(f"engine: {e}") from None


def openssl_version() -> str | None:
    return _native.openssl_version if _native else None
