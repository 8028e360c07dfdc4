"""An opened volume: what a format hands to the device — cipher, key, geometry, description."""

import sys
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from cryptfs.core.config import CryptoSection
from cryptfs.core.geometry import Geometry
from cryptfs.crypto.keys import Secret, read_key_file, read_passphrase
from cryptfs.crypto.spec import CipherSpec
from cryptfs.errors import WrongPassphrase


@dataclass
class Volume:
    kind: str                   # "plain", "luks1", "luks2"
    spec: CipherSpec
    key: Secret
    geometry: Geometry
    info: dict = field(default_factory=dict)    # format details for status (never secrets)

    def close(self) -> None:
        self.key.wipe()


class KeySource:
    """Where the user's key material comes from: a key file (``-``: stdin; ``offset`` and
    ``size`` as cryptsetup's --keyfile-offset/--keyfile-size), a passphrase asked for at the
    terminal, or a passphrase ``given`` by a program (the Python API).

    Formats decide what the material means (plain: a raw key or a passphrase to hash; LUKS: a
    passphrase for a key slot).  ``read()`` returns a fresh Secret the caller wipes.
    """

    def __init__(self, key_file: str | None = None, prompt: str = "Enter passphrase: ",
                 given: Secret | None = None, offset: int = 0, size: int = 0):
        self.key_file = key_file or None
        self.prompt = prompt
        self.offset, self.size = offset, size
        self._cached: Secret | None = given

    @property
    def is_file(self) -> bool:
        return self.key_file is not None

    @property
    def interactive(self) -> bool:
        """A passphrase typed at a terminal (which may be asked for again)."""
        return not self.is_file and sys.stdin.isatty()

    @classmethod
    def of(cls, crypto: CryptoSection, prompt: str = "Enter passphrase: ",
           key_file: str | None = None) -> "KeySource":
        """The key source ``[crypto]`` names (``key_file``: another file instead)."""
        return cls(key_file or crypto.key_file, prompt, offset=crypto.keyfile_offset,
                   size=crypto.keyfile_size)

    def read(self, most: int = 0) -> Secret:
        """Read the material once (stdin cannot be read twice); later calls return a copy.
        ``most``: read no more of a key file than this (plain mode needs only the key, so
        ``/dev/urandom`` works)."""
        if self._cached is None:
            self._cached = (read_key_file(self.key_file, self.offset, self.size, most)
                            if self.key_file else read_passphrase(self.prompt))
        return Secret(self._cached.buffer)

    def wipe(self) -> None:
        """Forget the material (wiped); the next read() asks or reads again."""
        if self._cached is not None:
            self._cached.wipe()
            self._cached = None


T = TypeVar("T")


def with_tries(keys: KeySource, tries: int, attempt: Callable[[], T]) -> T:
    """``attempt()``, asked again after a wrong passphrase typed at a terminal, up to ``tries``
    times in all (cryptsetup's --tries); a key file or piped input gets one try."""
    while True:
        try:
            return attempt()
        except WrongPassphrase as e:
            tries -= 1
            if tries <= 0 or not keys.interactive:
                raise
            print(e, file=sys.stderr)
            keys.wipe()
