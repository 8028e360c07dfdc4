"""An opened volume: what a format hands to the device — cipher, key, geometry, description."""

from dataclasses import dataclass, field

from .geometry import Geometry
from .keys import Secret, read_key_file, read_passphrase
from .spec import CipherSpec


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
    """Where the user's key material comes from: a key file (``-``: stdin), a passphrase asked
    for at the terminal, or a passphrase ``given`` by a program (the Python API).

    Formats decide what the material means (plain: a raw key or a passphrase to hash; LUKS: a
    passphrase for a key slot).  ``read()`` returns a fresh Secret the caller wipes.
    """

    def __init__(self, key_file: str | None = None, prompt: str = "Enter passphrase: ",
                 given: Secret | None = None):
        self.key_file = key_file or None
        self.prompt = prompt
        self._cached: Secret | None = given

    @property
    def is_file(self) -> bool:
        return self.key_file is not None

    def read(self) -> Secret:
        """Read the material once (stdin cannot be read twice); later calls return a copy."""
        if self._cached is None:
            self._cached = (read_key_file(self.key_file) if self.key_file
                            else read_passphrase(self.prompt))
        return Secret(self._cached.buffer)

    def wipe(self) -> None:
        if self._cached is not None:
            self._cached.wipe()

