"""Serpent, Twofish, Camellia, CAST5 and Blowfish for one data unit, through libgcrypt
(ctypes): the per-unit reference path of the non-AES block ciphers (the ``software`` backend
through backends/aes.py, LUKS key slots, ESSIV).

Why libgcrypt: it is cryptsetup's other crypto backend, so the very code cryptsetup users run;
it has all five, and XTS for any 128-bit block cipher.  OpenSSL 3 has no serpent or twofish, no
XTS for camellia, and keeps CAST5 and Blowfish in its legacy provider; pyca/cryptography (OpenSSL
underneath) has Camellia, CAST5 and Blowfish in ECB/CBC only.  The native core (backends/core.c)
links the same library; the tests check both against independent oracles (qemu-img's LUKS1
images, pyca/cryptography), never against this module alone.
"""

import ctypes
import ctypes.util
import functools
import threading


class GcryptError(Exception):
    """libgcrypt is missing or refused (backends.aes turns it into a CryptoFailure)."""


CryptoFailure = GcryptError

#: cipher → the key sizes (bits) libgcrypt and dm-crypt both take, per single key (libgcrypt
#: has no 192-bit twofish and only 128-bit CAST5; Blowfish takes 32 to 448 bits, as the kernel).
KEY_BITS = {"serpent": (128, 192, 256), "twofish": (128, 256), "camellia": (128, 192, 256),
            "cast5": (128,), "blowfish": tuple(range(32, 449, 8))}
#: The 64-bit block ciphers; every other block is 16 bytes.  dm-crypt's IV is one block.
_BLOCK_BYTES = {"cast5": 8, "blowfish": 8}
_MODES = {"ecb": 1, "cbc": 3, "xts": 13}      # GCRY_CIPHER_MODE_*
_GCRYCTL_SET_ALLOW_WEAK_KEY = 79
_GPG_ERR_WEAK_KEY = 43
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
            lib.gcry_cipher_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                            ctypes.c_size_t]
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


def block_bytes(cipher: str) -> int:
    """The block size of ``cipher`` (any cipher cryptfs names) in bytes."""
    return _BLOCK_BYTES.get(cipher, 16)


def algorithm_name(cipher: str, bits: int) -> str | None:
    """libgcrypt's name of ``cipher`` with a ``bits``-bit key, None if it has none."""
    if bits not in KEY_BITS.get(cipher, ()):
        return None
    if cipher == "twofish":
        return "TWOFISH128" if bits == 128 else "TWOFISH"
    if cipher in _BLOCK_BYTES:          # one name for every key length
        return cipher.upper()
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
        # libgcrypt calls a Blowfish key whose S-boxes repeat an entry weak and leaves it
        # unset; the kernel takes it (about one key in 30000), so cryptfs must too.
        lib.gcry_cipher_ctl(handle, _GCRYCTL_SET_ALLOW_WEAK_KEY, None, 1)
        keybuf = (ctypes.c_char * len(key)).from_buffer_copy(key)
        failed = lib.gcry_cipher_setkey(handle, keybuf, len(key)) & 0xFFFF   # the error code
        ctypes.memset(keybuf, 0, len(key))
        if failed and failed != _GPG_ERR_WEAK_KEY:
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


# --- digests and PBKDF2: the hashes Python's hashlib lacks (cryptfs/crypto/hashes.py) ---------
# libgcrypt again, for the same reason: it is cryptsetup's other crypto backend, so it has every
# hash cryptsetup takes (whirlpool, stribog, sm3, the blake2 sizes...) under cryptsetup's names,
# and PBKDF2 over any of them (gcry_kdf_derive), writing the key straight into the caller's
# buffer.  libgcrypt wipes a digest handle's state when it closes it.

_GCRY_KDF_PBKDF2 = 34


@functools.cache
def _md_library():
    """The library, with the digest and KDF functions' signatures declared."""
    lib = _gcrypt()
    lib.gcry_md_map_name.argtypes = [ctypes.c_char_p]
    lib.gcry_md_get_algo_dlen.argtypes = [ctypes.c_int]
    lib.gcry_md_get_algo_dlen.restype = ctypes.c_uint
    lib.gcry_md_open.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_uint]
    lib.gcry_md_copy.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    lib.gcry_md_write.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.gcry_md_write.restype = None
    lib.gcry_md_read.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.gcry_md_read.restype = ctypes.c_void_p
    lib.gcry_md_close.argtypes = [ctypes.c_void_p]
    lib.gcry_md_close.restype = None
    lib.gcry_kdf_derive.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_ulong,
                                    ctypes.c_size_t, ctypes.c_void_p]
    return lib


def digest_algorithm(name: str) -> int:
    """libgcrypt's number for the fixed-size digest it calls ``name`` (``whirlpool``,
    ``stribog256``, ``blake2b_256``...), 0 if it has none; GcryptError without libgcrypt."""
    lib = _md_library()
    algo = lib.gcry_md_map_name(name.encode())
    return algo if algo and lib.gcry_md_get_algo_dlen(algo) else 0


def _readable(data) -> tuple:
    """(pointer argument, length) of bytes-like ``data``, not copied unless it is a read-only
    view other than bytes."""
    view = memoryview(data)
    if not view.nbytes:
        return b"", 0
    if isinstance(data, bytes) or view.readonly:
        return bytes(data), view.nbytes
    return (ctypes.c_char * view.nbytes).from_buffer(view), view.nbytes


class GcryptHash:
    """One libgcrypt digest with hashlib's interface: ``update``, ``digest`` (the object stays
    usable, as hashlib's), ``copy``, ``digest_size``, ``name``."""

    def __init__(self, name: str, algo: int, _handle: ctypes.c_void_p | None = None):
        lib = self._lib = _md_library()
        self.name, self._algo = name, algo
        self.digest_size = lib.gcry_md_get_algo_dlen(algo)
        if _handle is None:
            _handle = ctypes.c_void_p()
            if lib.gcry_md_open(ctypes.byref(_handle), algo, 0):
                raise GcryptError(f"libgcrypt cannot open digest {name}")
        self._h = _handle

    def update(self, data) -> None:
        pointer, n = _readable(data)
        self._lib.gcry_md_write(self._h, pointer, n)

    def copy(self) -> "GcryptHash":
        handle = ctypes.c_void_p()
        if self._lib.gcry_md_copy(ctypes.byref(handle), self._h):
            raise GcryptError(f"libgcrypt cannot copy digest {self.name}")
        return GcryptHash(self.name, self._algo, handle)

    def digest(self) -> bytes:
        final = self.copy()                 # gcry_md_read finalises the handle it reads
        return ctypes.string_at(self._lib.gcry_md_read(final._h, self._algo), self.digest_size)

    def close(self) -> None:
        if getattr(self, "_h", None):
            self._lib.gcry_md_close(self._h)
            self._h = None

    __del__ = close


def gcrypt_pbkdf2(algo: int, password, salt: bytes, iterations: int, out: bytearray) -> None:
    """PBKDF2-HMAC over digest ``algo`` of ``password``, ``len(out)`` bytes written into
    ``out``; GcryptError if libgcrypt refuses."""
    lib = _md_library()
    pointer, n = _readable(password)
    key = (ctypes.c_char * len(out)).from_buffer(out)
    if lib.gcry_kdf_derive(pointer, n, _GCRY_KDF_PBKDF2, algo, salt, len(salt), iterations,
                           len(out), key):
        raise GcryptError("libgcrypt's PBKDF2 failed")
