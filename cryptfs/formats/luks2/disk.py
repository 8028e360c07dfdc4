"""LUKS2's binary header: the first 4096 bytes of each of the two header copies, integers
big-endian (LUKS2 on-disk format specification).  It is packed, unpacked and checksummed here
and nowhere else; :data:`BINARY` names its fields.

=======  ====  ======================================================================
offset   size  field
=======  ====  ======================================================================
0        6     magic: ``LUKS\\xba\\xbe`` (primary) or ``SKUL\\xba\\xbe`` (secondary)
6        2     version (2)
8        8     hdr_size: binary header + JSON area, bytes (16 KiB .. 4 MiB)
16       8     seqid: increases on every update; the higher copy wins
24       48    label
72       32    checksum_alg (``sha256``)
104      64    salt
168      40    uuid
208      48    subsystem
256      8     hdr_offset: where this copy starts, bytes
264      184   padding
448      64    csum: checksum_alg over hdr_size bytes with this field zeroed
=======  ====  ======================================================================

The JSON area follows (hdr_size − 4096 bytes, NUL-padded).  The secondary copy starts at the
primary's hdr_size.

A copy that fails a check raises :class:`DamagedCopy`, which carries which copy and why as
data; :class:`MissingCopy` (no magic at all) tells a prober to look further.
"""

from cryptfs.crypto import hashes
from cryptfs.errors import FormatError
from cryptfs.formats.binary import Record

MAGICS = {"primary": b"LUKS\xba\xbe", "secondary": b"SKUL\xba\xbe"}
MAGIC_PRIMARY, MAGIC_SECONDARY = MAGICS["primary"], MAGICS["secondary"]
VERSION = 2
BINARY_SIZE = 4096
HDR_SIZES = tuple(16384 << i for i in range(9))          # 16 KiB .. 4 MiB
BINARY = Record("Binary", [
    ("magic", "6s"), ("version", "H"), ("hdr_size", "Q"), ("seqid", "Q"), ("label", "48s"),
    ("checksum_alg", "32s"), ("salt", "64s"), ("uuid", "40s"), ("subsystem", "48s"),
    ("hdr_offset", "Q"), ("padding", "184s"), ("csum", "64s"),
], text=frozenset({"label", "checksum_alg", "uuid", "subsystem"}))
CSUM = BINARY.spans["csum"]
SALT_SIZE = BINARY.spans["salt"].stop - BINARY.spans["salt"].start


class DamagedCopy(FormatError):
    """A header copy cryptsetup would not use: ``copy`` ("primary" or "secondary") and
    ``reason``.  ``in_json``: the fault is in the JSON metadata, and ``reason`` reads the same
    whichever copy has it."""

    def __init__(self, message: str, copy: str, reason: str, in_json: bool = False):
        super().__init__(message)
        self.copy, self.reason, self.in_json = copy, reason, in_json

    @classmethod
    def binary(cls, copy: str, offset: int, reason: str) -> "DamagedCopy":
        return cls(f"the {copy} LUKS2 header at {offset} {reason}", copy, reason)

    @classmethod
    def json(cls, copy: str, reason: str) -> "DamagedCopy":
        return cls(f"the {copy} LUKS2 header: {reason}", copy, reason, in_json=True)


class MissingCopy(DamagedCopy):
    """No header copy at all where one was looked for (``offset`` None: at none of the known
    offsets)."""

    def __init__(self, copy: str, offset: int | None = None):
        where = "any of the known offsets" if offset is None else offset
        super().__init__(f"no {copy} LUKS2 header at {where}", copy, "missing")


def checksum(alg: str, area: bytes | bytearray) -> bytes | None:
    """``alg`` (as cryptsetup names it) over ``area`` with the csum field zeroed; None if
    cryptfs has no such hash."""
    if not hashes.supported(alg):
        return None
    h = hashes.new(alg)
    h.update(memoryview(area)[:CSUM.start])
    h.update(bytes(CSUM.stop - CSUM.start))
    h.update(memoryview(area)[CSUM.stop:])
    return h.digest()


def read_copy(read_at, offset: int, copy: str) -> tuple[tuple, bytes]:
    """(binary fields, the whole area) of the copy at ``offset``, checked as cryptsetup checks
    it before the JSON: magic, version, offset, size, checksum."""
    raw = read_at(offset, BINARY_SIZE)
    if len(raw) < BINARY_SIZE:
        raise DamagedCopy.binary(copy, offset, "is truncated")
    fields = BINARY.unpack(raw)
    if fields.magic != MAGICS[copy]:
        raise MissingCopy(copy, offset)
    if fields.version != VERSION:
        raise DamagedCopy.binary(copy, offset, f"has version {fields.version}, not 2")
    if fields.hdr_offset != offset:
        raise DamagedCopy.binary(copy, offset, f"says it is at {fields.hdr_offset}")
    if not HDR_SIZES[0] <= fields.hdr_size <= HDR_SIZES[-1]:
        raise DamagedCopy.binary(copy, offset, f"has a size of {fields.hdr_size} (allowed "
                                               "16 KiB .. 4 MiB)")
    if copy == "secondary" and fields.hdr_size != offset:
        raise DamagedCopy.binary(copy, offset, f"has a size of {fields.hdr_size}: it must "
                                               "start where the primary ends")
    area = read_at(offset, fields.hdr_size)
    if len(area) < fields.hdr_size:
        raise DamagedCopy.binary(copy, offset, "is truncated")
    digest = checksum(fields.checksum_alg, area)
    if digest is None:
        raise DamagedCopy.binary(copy, offset, f"has checksum algorithm "
                                               f"{fields.checksum_alg!r}, which is not supported")
    if fields.csum[:len(digest)] != digest:
        raise DamagedCopy.binary(copy, offset, "has a bad checksum")
    return fields, area


def pack_copy(fields: tuple, text: bytes) -> bytearray:
    """A whole copy: ``fields`` (their csum ignored), the JSON ``text`` NUL-padded to the end,
    the checksum in place.  FormatError if the text does not fit."""
    json_size = fields.hdr_size - BINARY_SIZE
    if len(text) >= json_size:
        raise FormatError(f"the LUKS2 metadata ({len(text)} bytes) does not fit its "
                          f"{json_size}-byte JSON area")
    area = bytearray(fields.hdr_size)
    area[:BINARY.size] = BINARY.pack(fields._replace(csum=b""))
    area[BINARY_SIZE:BINARY_SIZE + len(text)] = text
    digest = checksum(fields.checksum_alg, area)
    if digest is None:
        raise FormatError(f"checksum algorithm {fields.checksum_alg!r} is not supported")
    area[CSUM.start:CSUM.start + len(digest)] = digest
    return area
