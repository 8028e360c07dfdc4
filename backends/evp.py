"""AES data units through OpenSSL's EVP interface directly, keyed once.

pyca/cryptography builds a new cipher context — and re-expands the key — for every IV, which
costs microseconds per data unit.  OpenSSL can change only the IV of a keyed context
(``EVP_CipherInit_ex`` with no cipher and no key), and no Python library exposes that, so this
module binds the five EVP calls it needs with ctypes.  Where libcrypto cannot be loaded,
:func:`available` is False and callers use the cryptography path instead.
"""

import ctypes
import ctypes.util
import threading

from .base import CryptoFailure, Op

_lib = None
try:
    _lib = ctypes.CDLL(ctypes.util.find_library("crypto") or "libcrypto.so.3")
    _lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
    _lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
    _lib.EVP_get_cipherbyname.restype = ctypes.c_void_p
    _lib.EVP_get_cipherbyname.argtypes = [ctypes.c_char_p]
    _lib.EVP_CipherInit_ex.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    _lib.EVP_CipherUpdate.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.POINTER(ctypes.c_int), ctypes.c_void_p,
                                      ctypes.c_int]
    _lib.EVP_CIPHER_CTX_set_padding.argtypes = [ctypes.c_void_p, ctypes.c_int]
except (OSError, AttributeError):
    _lib = None


def available() -> bool:
    return _lib is not None


class _Contexts(threading.local):
    """One keyed encrypt and decrypt context per thread (EVP contexts are not reentrant)."""

    def __init__(self, owner: "EvpUnitCipher"):
        self.by_op = {Op.ENCRYPT: owner._new_context(1), Op.DECRYPT: owner._new_context(0)}


class EvpUnitCipher:
    """``crypt_units(op, ivs, src_addr, dst_addr, du)``: one EVP update per data unit."""

    def __init__(self, mode: str, key: bytes | bytearray):
        if _lib is None:
            raise CryptoFailure("libcrypto is not available")
        name = f"aes-{len(key) * 4 if mode == 'xts' else len(key) * 8}-{mode}".encode()
        self._cipher = _lib.EVP_get_cipherbyname(name)
        if not self._cipher:
            raise CryptoFailure(f"libcrypto has no {name.decode()}")
        self._key = key
        self._all: list[int] = []
        self._lock = threading.Lock()
        self._local = _Contexts(self)

    def _new_context(self, encrypt: int) -> int:
        ctx = _lib.EVP_CIPHER_CTX_new()
        key = (ctypes.c_char * len(self._key)).from_buffer_copy(self._key)
        ok = _lib.EVP_CipherInit_ex(ctx, self._cipher, None, key, None, encrypt)
        ctypes.memset(key, 0, len(self._key))
        if not ok:
            _lib.EVP_CIPHER_CTX_free(ctx)
            raise CryptoFailure("OpenSSL refuses this key")
        _lib.EVP_CIPHER_CTX_set_padding(ctx, 0)
        with self._lock:
            self._all.append(ctx)
        return ctx

    def crypt_units(self, op: Op, ivs: list[bytes], src: int, dst: int, du: int) -> None:
        """Data unit i of the buffer at address ``src`` → ``dst``, with IV ``ivs[i]``."""
        ctx = self._local.by_op[op]
        init, update = _lib.EVP_CipherInit_ex, _lib.EVP_CipherUpdate
        written = ctypes.byref(ctypes.c_int())
        for i, iv in enumerate(ivs):
            if not (init(ctx, None, None, None, iv, -1) and
                    update(ctx, dst + i * du, written, src + i * du, du)):
                raise CryptoFailure("OpenSSL failed to process a data unit")

    def close(self) -> None:
        with self._lock:
            for ctx in self._all:
                _lib.EVP_CIPHER_CTX_free(ctx)       # frees (and OpenSSL clears) the key schedule
            self._all.clear()
