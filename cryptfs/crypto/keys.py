"""Key material: wipeable buffers, key files, passphrases, and cryptsetup's plain-mode hashing.

Keys and passphrases live in :class:`Secret` (a bytearray that never prints its content and is
zeroed by :meth:`Secret.wipe`).  Python itself may keep transient copies we cannot reach (e.g.
inside the cipher library); cryptfs keeps none of its own beyond the Secret.
"""

import getpass
import os
import stat
import sys

from cryptfs.crypto import hashes
from cryptfs.errors import KeyMaterialError, NoPassphrase

#: cryptsetup refuses larger key files by default; so do we (they are surely a mistake).
MAX_KEY_FILE = 8192 * 1024
#: cryptsetup's limit for an interactive passphrase, in characters.
MAX_PASSPHRASE = 512


class Secret:
    """Bytes that must not leak: no repr/str of the content, zeroed by wipe()."""

    __slots__ = ("buffer",)

    def __init__(self, data: bytes | bytearray = b""):
        self.buffer = bytearray(data)

    def __len__(self) -> int:
        return len(self.buffer)

    def __repr__(self) -> str:
        return f"<Secret {len(self.buffer)} bytes>"

    __str__ = __repr__

    def wipe(self) -> None:
        self.buffer[:] = bytes(len(self.buffer))

    def __enter__(self) -> "Secret":
        return self

    def __exit__(self, *exc) -> None:
        self.wipe()


def read_key_file(path: str, offset: int = 0, size: int = 0, most: int = 0) -> Secret:
    """Read a key file as cryptsetup does: skip ``offset`` bytes, then read ``size`` bytes, or
    to the end of the file when ``size`` is 0 — but no more than ``most`` bytes when given
    (plain mode's key size), and never more than MAX_KEY_FILE.

    Any readable file works: regular files, block and character devices (``/dev/urandom``
    with a size), pipes, FIFOs (opening one blocks until a writer comes, as in cryptsetup),
    ``/dev/stdin``, process substitution, ``-`` (standard input).  Nothing is seeked unless
    ``offset`` asks for it, and then only where the file can seek; elsewhere the bytes are
    read and dropped.  KeyMaterialError, one line, for anything else."""
    if offset < 0 or size < 0:
        raise KeyMaterialError("--keyfile-offset and --keyfile-size cannot be negative")
    limit = size or most or MAX_KEY_FILE + 1
    try:
        fd = 0 if path == "-" else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KeyMaterialError(f"cannot read key file {path}: {e.strerror}") from None
    secret = Secret(bytes(limit))
    try:
        _skip(fd, offset)
        got = _read_into(fd, memoryview(secret.buffer))
    except OSError as e:
        secret.wipe()
        raise KeyMaterialError(f"cannot read key file {path}: {e.strerror}") from None
    finally:
        if fd:
            os.close(fd)
    del secret.buffer[got:]
    if len(secret) > MAX_KEY_FILE:
        secret.wipe()
        raise KeyMaterialError(f"key file {path} is larger than {MAX_KEY_FILE // 1024} KiB "
                               "(--keyfile-size reads a part of it)")
    if not secret or len(secret) < size:
        secret.wipe()
        raise KeyMaterialError(f"key file {path} is empty" if not secret else
                               f"key file {path} holds {len(secret)} of the {size} bytes asked "
                               "for (--keyfile-size)")
    return secret


def _skip(fd: int, offset: int) -> None:
    """Move ``offset`` bytes on: a seek where the file can, else read and dropped."""
    if not offset:
        return
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        os.lseek(fd, offset, os.SEEK_CUR)
        return
    while offset:
        dropped = os.read(fd, min(offset, 1 << 16))
        if not dropped:
            return              # ends before the key: reading it finds it empty
        offset -= len(dropped)


def _read_into(fd: int, view: memoryview) -> int:
    """Fill ``view`` from ``fd`` until it is full or the file ends; the bytes read."""
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            break
        got += n
    return got


def read_passphrase(prompt: str = "Enter passphrase: ") -> Secret:
    """Prompt without echo on a terminal; otherwise read one line from standard input."""
    if sys.stdin.isatty():
        text = getpass.getpass(prompt)
    else:
        text = sys.stdin.readline()
        if text.endswith("\n"):
            text = text[:-1]
    secret = Secret(text.encode())
    del text
    if not secret:
        raise NoPassphrase("no passphrase given")
    if len(secret) > MAX_PASSPHRASE:
        secret.wipe()
        raise KeyMaterialError(f"passphrase is longer than {MAX_PASSPHRASE} characters")
    return secret


def key_from_file(secret: Secret, key_bytes: int, path: str) -> Secret:
    """The first ``key_bytes`` of a key file, unhashed (cryptsetup plain mode with a key file)."""
    if len(secret) < key_bytes:
        raise KeyMaterialError(f"key file {path} holds {len(secret)} bytes but a "
                               f"{key_bytes * 8}-bit key needs {key_bytes}")
    return Secret(secret.buffer[:key_bytes])


def hash_passphrase(hash_name: str, passphrase: Secret, key_bytes: int) -> Secret:
    """cryptsetup's plain-mode key derivation.

    ``plain``: the passphrase itself, cut or zero-padded to the key size.  Otherwise the digest
    of the passphrase; if the key is longer than one digest, round *r* hashes *r* bytes ``'A'``
    followed by the passphrase (the "hashalot" scheme cryptsetup keeps for compatibility).
    SpecError if cryptfs has no hash ``hash_name`` (:func:`cryptfs.crypto.hashes.new`).
    """
    key = Secret(bytes(key_bytes))
    if hash_name == "plain":
        n = min(key_bytes, len(passphrase))
        key.buffer[:n] = passphrase.buffer[:n]
        return key
    base = hashes.new(hash_name)
    done, rounds = 0, 0
    while done < key_bytes:
        h = base.copy()
        h.update(b"A" * rounds)
        h.update(passphrase.buffer)
        digest = bytearray(h.digest())
        n = min(len(digest), key_bytes - done)
        key.buffer[done:done + n] = digest[:n]
        digest[:] = bytes(len(digest))
        done, rounds = done + n, rounds + 1
    return key
