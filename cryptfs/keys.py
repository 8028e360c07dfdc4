"""Key material: wipeable buffers, key files, passphrases, and cryptsetup's plain-mode hashing.

Keys and passphrases live in :class:`Secret` (a bytearray that never prints its content and is
zeroed by :meth:`Secret.wipe`).  Python itself may keep transient copies we cannot reach (e.g.
inside the cipher library); cryptfs keeps none of its own beyond the Secret.
"""

import getpass
import hashlib
import sys

from .errors import KeyMaterialError

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


def read_key_file(path: str, offset: int = 0, size: int = 0) -> Secret:
    """Read a key file (``-``: standard input) as cryptsetup does: skip ``offset`` bytes, then
    ``size`` bytes, or to the end of the file when ``size`` is 0."""
    limit = size or MAX_KEY_FILE + 1
    try:
        if path == "-":
            data = sys.stdin.buffer.read(offset + limit)[offset:]
        else:
            with open(path, "rb", buffering=0) as f:
                f.seek(offset)
                data = f.read(limit)
    except OSError as e:
        raise KeyMaterialError(f"cannot read key file {path}: {e.strerror}") from None
    secret = Secret(data)
    del data
    if len(secret) > MAX_KEY_FILE:
        secret.wipe()
        raise KeyMaterialError(f"key file {path} is larger than {MAX_KEY_FILE // 1024} KiB")
    if not secret or len(secret) < size:
        secret.wipe()
        raise KeyMaterialError(f"key file {path} is empty" if not secret else
                               f"key file {path} holds {len(secret)} of the {size} bytes asked "
                               "for (--keyfile-size)")
    return secret


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
        raise KeyMaterialError("no passphrase given")
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
    """
    key = Secret(bytes(key_bytes))
    if hash_name == "plain":
        n = min(key_bytes, len(passphrase))
        key.buffer[:n] = passphrase.buffer[:n]
        return key
    try:
        hashlib.new(hash_name)
    except ValueError:
        raise KeyMaterialError(f"hash '{hash_name}' is not available "
                               f"(e.g. sha256, sha512, sha1, ripemd160, plain)") from None
    done, rounds = 0, 0
    while done < key_bytes:
        h = hashlib.new(hash_name)
        h.update(b"A" * rounds)
        h.update(passphrase.buffer)
        digest = bytearray(h.digest())
        n = min(len(digest), key_bytes - done)
        key.buffer[done:done + n] = digest[:n]
        digest[:] = bytes(len(digest))
        done, rounds = done + n, rounds + 1
    return key
