"""Fixed binary records (LUKS1's phdr and key slots, LUKS2's binary header), each declared once
by field name and struct format, big-endian: unpacked into a namedtuple, packed from one.

Fields named in ``text`` are C strings: read up to the first NUL and never including the field's
last byte (cryptsetup ends every such field with a NUL), written NUL-padded; bytes that are not
UTF-8 survive the round trip (surrogateescape).  ``struct`` cuts a text longer than its field,
so callers check the lengths users choose.
"""

import struct
from collections import namedtuple


def cstr(raw: bytes) -> str:
    """A NUL-padded text field as C reads it."""
    return raw[:-1].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class Record:
    """``Record("Name", [(field, struct format), ...], text={...})``.  ``Record.type`` is the
    namedtuple; fields not given to it are zero (numbers) or empty (bytes, text)."""

    def __init__(self, name: str, fields: list[tuple[str, str]],
                 text: frozenset[str] = frozenset()):
        self.struct = struct.Struct(">" + "".join(f for _, f in fields))
        self.size = self.struct.size
        self.text = text
        self.type = namedtuple(name, [n for n, _ in fields], defaults=[
            ("" if n in text else b"") if f.endswith("s") else 0 for n, f in fields])
        self.spans, offset = {}, 0
        for n, f in fields:
            size = struct.calcsize(">" + f)
            self.spans[n] = slice(offset, offset + size)
            offset += size

    def unpack(self, data: bytes | bytearray, offset: int = 0):
        values = self.struct.unpack_from(data, offset)
        return self.type._make(cstr(v) if n in self.text else v
                               for n, v in zip(self.type._fields, values))

    def pack(self, record) -> bytes:
        return self.struct.pack(*(v.encode("utf-8", "surrogateescape") if n in self.text else v
                                  for n, v in zip(self.type._fields, record)))
