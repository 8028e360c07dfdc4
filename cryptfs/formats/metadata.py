"""Writing a header file: every write is followed by ``fsync``, so each step is on disk before
the next one starts (the order of the steps is each format's: :mod:`.luks1`,
:mod:`.luks2.header`)."""

import os

from cryptfs.formats import luks


def write_at(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """pwrite all of ``data`` at ``offset``, then fsync."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    os.fsync(fd)


class WritableHeader(luks.HeaderFile):
    """The file holding a LUKS header, open for reading and writing."""

    def __init__(self, path: str):
        super().__init__(path, writable=True)

    def write(self, offset: int, data: bytes | bytearray) -> None:
        write_at(self.fd, data, offset)

    def wipe(self, offset: int, length: int) -> None:
        """Overwrite removed key material with random bytes (cryptsetup's last pass)."""
        self.write(offset, os.urandom(length))
