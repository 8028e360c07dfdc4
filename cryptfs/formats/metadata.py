"""Writing LUKS metadata as cryptsetup writes it, in an order that survives being killed.

Every write is followed by ``fsync``, so each step is on disk before the next one starts.

LUKS2 (lib/luks2/luks2_disk_metadata.c): an update increments the sequence id and writes the
primary copy, then the secondary; each copy is the binary header and the whole JSON area with
its checksum.  A copy cut short fails its checksum, so a reader always finds one whole copy —
the old one until the primary is complete, the new one after.  Before an update, a copy that is
damaged or older than the other is rewritten from the newer one (cryptsetup does the same when
it loads a header for writing); otherwise a key slot area free in the newer copy could still be
in use by the older one, which a reader falls back to if the update is cut short.

LUKS1 has one header of 592 bytes, written whole.
"""

import hashlib
import os

from ..errors import FormatError
from . import jsonc, luks, luks1, luks2


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


def write_luks1(f: WritableHeader, header: luks1.Luks1Header) -> None:
    f.write(0, header.pack())


# --- LUKS2 ---------------------------------------------------------------------------------

def _checksum(alg: str, area: bytes | bytearray) -> bytes:
    h = hashlib.new(alg)
    h.update(area[:luks2.CSUM_OFFSET])
    h.update(bytes(luks2.CSUM_SIZE))
    h.update(area[luks2.CSUM_OFFSET + luks2.CSUM_SIZE:])
    return h.digest().ljust(luks2.CSUM_SIZE, b"\0")


def _copy_fields(area: bytes, magic: bytes, hdr_size: int) -> tuple | None:
    """The binary fields of a whole, checksummed header copy, or None."""
    if len(area) < hdr_size:
        return None
    fields = luks2.BINARY.unpack_from(area)
    if fields[0] != magic or fields[1] != luks2.VERSION or fields[2] != hdr_size:
        return None
    try:
        ok = fields[11] == _checksum(fields[5].rstrip(b"\0").decode("ascii"), area[:hdr_size])
    except (UnicodeDecodeError, ValueError):
        return None
    return fields if ok else None


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class Luks2Writer:
    """Updates of one LUKS2 header: ``commit`` the changed metadata (and binary fields)."""

    COPIES = ((luks2.MAGIC_PRIMARY, 0), (luks2.MAGIC_SECONDARY, 1))

    def __init__(self, f: WritableHeader, header: luks2.Luks2Header):
        self.f, self.header = f, header
        self.hdr_size, self.seqid = header.hdr_size, header.seqid
        copies = [_copy_fields(f.read_at(i * self.hdr_size, self.hdr_size), magic,
                               self.hdr_size) for magic, i in self.COPIES]
        current = next((c for c in copies if c and c[3] == self.seqid), None)
        if current is None:
            raise FormatError(f"{f.path}: no LUKS2 header copy of {self.hdr_size} bytes at 0 "
                              "or after it matches the metadata read ('cryptsetup repair'?)")
        self.label, self.subsystem = header.label, header.subsystem
        self.uuid, self.csum_alg = header.uuid, header.csum_alg
        self.salts = [c[6] if c else os.urandom(64) for c in copies]
        stale = [i for i, c in enumerate(copies) if not (c and c[3] == self.seqid)]
        for i in stale:                   # cryptsetup's recovery: a fresh salt, the same seqid
            self.salts[i] = os.urandom(64)
            self._write_copy(i, header.metadata)

    def commit(self, metadata: dict) -> None:
        """Write ``metadata`` (and the current uuid/label/subsystem) as the next version."""
        self.seqid += 1
        for i in range(2):
            self._write_copy(i, metadata)

    def _write_copy(self, i: int, metadata: dict) -> None:
        self.f.write(i * self.hdr_size, self._pack(i, metadata))

    def _pack(self, i: int, metadata: dict) -> bytes:
        text = jsonc.on_disk(metadata).encode("utf-8", "surrogateescape")
        json_size = self.hdr_size - luks2.BINARY_SIZE
        if len(text) >= json_size:
            raise FormatError(f"the LUKS2 metadata ({len(text)} bytes) does not fit its "
                              f"{json_size}-byte JSON area")
        magic = self.COPIES[i][0]
        area = bytearray(luks2.BINARY.pack(
            magic, luks2.VERSION, self.hdr_size, self.seqid, _raw(self.label),
            _raw(self.csum_alg), self.salts[i], _raw(self.uuid), _raw(self.subsystem),
            i * self.hdr_size, b"", b""))
        area += bytes(luks2.BINARY_SIZE - len(area)) + text + bytes(json_size - len(text))
        area[luks2.CSUM_OFFSET:luks2.CSUM_OFFSET + luks2.CSUM_SIZE] = \
            _checksum(self.csum_alg, area)
        return bytes(area)
