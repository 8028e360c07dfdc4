"""Serpent, Twofish and Camellia for one data unit, through libgcrypt (ctypes): the per-unit
reference path of the non-AES block ciphers (the ``software`` backend through
backends/aes.py, LUKS key slots, ESSIV).

Why libgcrypt: it is cryptsetup's other crypto backend, so the very code cryptsetup users run;
it has serpent, twofish and camellia, and XTS for any 128-bit block cipher.  OpenSSL 3 has no
serpent or twofish and no XTS for camellia; pyca/cryptography (OpenSSL underneath) has Camellia
in ECB/CBC only.  The native core (backends/core.c) links the same library; the tests check
both against independent oracles (qemu-img's LUKS1 images, pyca/cryptography's Camellia), never
against this module alone.
"""

import ctypes
import ctypes.util
import threading


class GcryptError(Exception):
    """libgcrypt is missing or refused (backends.aes turns it into a CryptoFailure)."""


CryptoFailure = GcryptError

#: cipher → the key sizes (bits) libgcrypt and dm-crypt both take, per single key.
KEY_BITS = {"serpent": (128, 192, 256), "twofish": (128, 256), "camellia": (128, 192, 256)}
_MODES = {"ecb": 1, "cbc": 3, "xts": 13}      # GCRY_CIPHER_MODE_*
_GCRYCTL_DISABLE_SECMEM = 37
_GCRYCTL_INITIALIZATION_FINISHED = 38
_GCRYCTL_INITIALIZATION_FINISHED_P = 39

_lib = None
_lock = threading.Lock()


def _gcrypt():
    global _lib
    with _lock:
        if _lib is None:
            name = ctypes.util.find_library("gcrypt") or "libgcrypt.so.20"
            try:
                lib = ctypes.CDLL(name)
            except OSError as e:
                raise CryptoFailure(f"libgcrypt is not installed ({e})") from None
            lib.gcry_check_version.restype = ctypes.c_char_p
            lib.gcry_check_version.argtypes = [ctypes.c_char_p]
            lib.gcry_cipher_map_name.argtypes = [ctypes.c_char_p]
            lib.gcry_cipher_open.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                             ctypes.c_int, ctypes.c_uint]
            lib.gcry_cipher_setkey.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            lib.gcry_cipher_setiv.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            for f in (lib.gcry_cipher_encrypt, lib.gcry_cipher_decrypt):
                f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                              ctypes.c_void_p, ctypes.c_size_t]
            lib.gcry_cipher_close.argtypes = [ctypes.c_void_p]
            if not lib.gcry_control(_GCRYCTL_INITIALIZATION_FINISHED_P, 0):
                lib.gcry_check_version(None)
                lib.gcry_control(_GCRYCTL_DISABLE_SECMEM, 0)
                lib.gcry_control(_GCRYCTL_INITIALIZATION_FINISHED, 0)
            _lib = lib
    return _lib


def algorithm_name(cipher: str, bits: int) -> str | None:
    """libgcrypt's name of ``cipher`` with a ``bits``-bit key, None if it has none."""
    if bits not in KEY_BITS.get(cipher, ()):
        return None
    if cipher == "twofish":
        return "TWOFISH128" if bits == 128 else "TWOFISH"
    return f"{cipher.upper()}{bits}"


class GcryptCipher:
    """One keyed libgcrypt handle: ``crypt(encrypt, iv, src, dst)`` converts one data unit
    (ECB: ``iv`` ignored).  Not thread-safe (a handle holds the IV): one per user."""

    def __init__(self, cipher: str, mode: str, key: bytes | bytearray):
        lib = _gcrypt()
        bits = len(key) * 8 // (2 if mode == "xts" else 1)
        name = algorithm_name(cipher, bits)
        algo = lib.gcry_cipher_map_name(name.encode()) if name else 0
        if not algo or mode not in _MODES:
            raise CryptoFailure(f"{cipher}-{mode} takes no {len(key) * 8}-bit key")
        handle = ctypes.c_void_p()
        if lib.gcry_cipher_open(ctypes.byref(handle), algo, _MODES[mode], 0):
            raise CryptoFailure(f"libgcrypt cannot open {cipher}-{mode}")
        self._lib, self._h, self._ecb = lib, handle, mode == "ecb"
        keybuf = (ctypes.c_char * len(key)).from_buffer_copy(key)
        failed = lib.gcry_cipher_setkey(handle, keybuf, len(key))
        ctypes.memset(keybuf, 0, len(key))
        if failed:
            self.close()
            raise CryptoFailure(f"libgcrypt refuses this {cipher}-{mode} key")

    def crypt(self, encrypt: bool, iv: bytes | None, src, dst) -> None:
        lib = self._lib
        if not self._ecb and lib.gcry_cipher_setiv(self._h, bytes(iv), len(iv)):
            raise CryptoFailure("libgcrypt refuses the IV")
        n = len(src)
        out = (ctypes.c_char * n).from_buffer(dst)
        f = lib.gcry_cipher_encrypt if encrypt else lib.gcry_cipher_decrypt
        if src is dst or (isinstance(src, memoryview) and isinstance(dst, memoryview) and
                          src.obj is dst.obj and _address(src) == _address(dst)):
            failed = f(self._h, out, n, None, 0)
        else:
            failed = f(self._h, out, n, bytes(src), n)
        if failed:
            raise CryptoFailure("libgcrypt failed to convert a data unit")

    def close(self) -> None:
        if getattr(self, "_h", None):
            self._lib.gcry_cipher_close(self._h)   # libgcrypt wipes the key schedule
            self._h = None

    __del__ = close


def _address(view: memoryview) -> int:
    return ctypes.addressof((ctypes.c_char * 1).from_buffer(view)) if not view.readonly \
        else -1
