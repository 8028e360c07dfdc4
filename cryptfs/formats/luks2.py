"""LUKS2: two binary headers with checksums, JSON metadata, key slots, digests, one segment.

Binary header (the first 4096 bytes of each header copy; integers big-endian), from the LUKS2
on-disk format specification:

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
primary's hdr_size; when the primary is unreadable the known sizes are probed for it.
"""

import base64
import hashlib
import json
import os
import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any, Callable

from backends.base import Op

from ..errors import FormatError, KeyMaterialError, WrongPassphrase
from ..geometry import SECTOR, check_sector_size
from ..keys import Secret
from ..spec import parse_spec
from . import af
from .kdf import Kdf, pbkdf2_digest
from .keyslot_area import crypt_area, padded, read_material

MAGIC_PRIMARY, MAGIC_SECONDARY = b"LUKS\xba\xbe", b"SKUL\xba\xbe"
VERSION = 2
BINARY = struct.Struct(">6sHQQ48s32s64s40s48sQ184s64s")
BINARY_SIZE = 4096
CSUM_OFFSET, CSUM_SIZE = 448, 64
HDR_SIZES = tuple(16384 << i for i in range(9))          # 16 KiB .. 4 MiB
KEYSLOTS_OFFSET = 2 * HDR_SIZES[0]                       # after both 16 KiB copies
DATA_OFFSET = 16 << 20                                   # cryptsetup's default
STRIPES = 4000
AREA_ALIGN = 4096
MAX_KEYSLOTS = 32
DIGEST_SIZE = SALT_SIZE = 32

ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Keyslot:
    id: int
    key_size: int             # volume key bytes stored
    stripes: int
    af_hash: str
    area_offset: int
    area_size: int
    area_encryption: str
    area_key_size: int
    kdf: Kdf
    priority: int = 1         # 0 ignore, 1 normal, 2 high


@dataclass(frozen=True)
class Segment:
    offset: int               # bytes into the data device
    size: int | None          # bytes, None = "dynamic" (to the end of the device)
    iv_tweak: int             # 512-byte sectors added to IV sectors
    encryption: str
    sector_size: int


@dataclass(frozen=True)
class Digest:
    keyslots: frozenset[int]
    segments: frozenset[int]
    hash: str
    iterations: int
    salt: bytes
    digest: bytes


@dataclass
class Luks2Header:
    hdr_size: int
    seqid: int
    uuid: str
    label: str
    csum_alg: str
    metadata: dict
    keyslots: dict[int, Keyslot]
    segment_id: int
    segment: Segment
    digests: list[Digest]
    keyslots_size: int
    warnings: list[str] = field(default_factory=list)


# --- reading -----------------------------------------------------------------------------

def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def _read_copy(read_at: ReadAt, offset: int, magic: bytes) -> tuple[tuple, dict]:
    """One header copy at ``offset``, checksum verified; FormatError if anything is off."""
    raw = read_at(offset, BINARY_SIZE)
    if len(raw) < BINARY_SIZE:
        raise FormatError(f"LUKS2 header at {offset} is truncated")
    fields = BINARY.unpack_from(raw)
    if fields[0] != magic or fields[1] != VERSION:
        raise FormatError(f"no LUKS2 header at {offset}")
    hdr_size, hdr_offset, csum_alg = fields[2], fields[9], _text(fields[5])
    if hdr_size not in HDR_SIZES or hdr_offset != offset:
        raise FormatError(f"LUKS2 header at {offset} has an invalid size or offset")
    area = read_at(offset, hdr_size)
    if len(area) < hdr_size:
        raise FormatError(f"LUKS2 header at {offset} is truncated")
    try:
        h = hashlib.new(csum_alg)
    except ValueError:
        raise FormatError(f"LUKS2 checksum algorithm '{csum_alg}' is not available") from None
    h.update(area[:CSUM_OFFSET] + bytes(CSUM_SIZE) + area[CSUM_OFFSET + CSUM_SIZE:])
    if fields[11] != h.digest() + bytes(CSUM_SIZE - h.digest_size):
        raise FormatError(f"LUKS2 header at {offset} has a bad checksum")
    text = area[BINARY_SIZE:].split(b"\0", 1)[0]
    try:
        metadata = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise FormatError(f"LUKS2 header at {offset} holds invalid JSON") from None
    if not isinstance(metadata, dict):
        raise FormatError(f"LUKS2 header at {offset} holds invalid JSON")
    return fields, metadata


def read(read_at: ReadAt) -> Luks2Header:
    """Both header copies, the newer valid one interpreted; warns if one copy is damaged."""
    copies, errors = [], []
    try:
        copies.append(_read_copy(read_at, 0, MAGIC_PRIMARY))
    except FormatError as e:
        errors.append(str(e))
    offsets = [copies[0][0][2]] if copies else list(HDR_SIZES)
    for offset in offsets:
        try:
            copies.append(_read_copy(read_at, offset, MAGIC_SECONDARY))
            break
        except FormatError as e:
            if copies:
                errors.append(str(e))
    if not copies:
        raise FormatError("both LUKS2 headers are damaged (" + "; ".join(errors) + ")")
    fields, metadata = max(copies, key=lambda c: c[0][3])      # the higher seqid
    header = _interpret(fields, metadata)
    if len(copies) == 1:
        which = "secondary" if copies[0][0][0] == MAGIC_PRIMARY else "primary"
        header.warnings.append(f"the {which} LUKS2 header is damaged ({errors[0]}); using the "
                               f"other copy — 'cryptsetup repair' can restore it")
    return header


def _get(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise FormatError(f"LUKS2 metadata: {where} lacks '{key}'")
    value = obj[key]
    if kind is int and isinstance(value, str) and value.isdigit():
        value = int(value)              # LUKS2 stores 64-bit numbers as decimal strings
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FormatError(f"LUKS2 metadata: {where}.{key} has the wrong type")
    return value


def _b64(obj: Any, key: str, where: str) -> bytes:
    try:
        return base64.b64decode(_get(obj, key, str, where), validate=True)
    except ValueError:
        raise FormatError(f"LUKS2 metadata: {where}.{key} is not base64") from None


def _kdf(obj: Any, where: str) -> Kdf:
    kind = _get(obj, "type", str, where)
    salt = _b64(obj, "salt", where)
    if kind == "pbkdf2":
        kdf = Kdf(kind, salt, _get(obj, "iterations", int, where), _get(obj, "hash", str, where))
    else:
        kdf = Kdf(kind, salt, _get(obj, "time", int, where), memory=_get(obj, "memory", int, where),
                  parallel=_get(obj, "cpus", int, where))
    kdf.check()
    return kdf


def _ids(obj: Any, key: str, where: str) -> frozenset[int]:
    items = _get(obj, key, list, where)
    if not all(isinstance(i, str) and i.isdigit() for i in items):
        raise FormatError(f"LUKS2 metadata: {where}.{key} must list ids")
    return frozenset(int(i) for i in items)


def _interpret(fields: tuple, meta: dict) -> Luks2Header:
    """Turn the JSON into typed metadata, refusing what cryptfs cannot serve, and why."""
    for section in ("keyslots", "segments", "digests", "config"):
        if not isinstance(meta.get(section), dict):
            raise FormatError(f"LUKS2 metadata lacks the '{section}' object")
    config = meta["config"]
    required = config.get("requirements", {}).get("mandatory", []) \
        if isinstance(config.get("requirements"), dict) else []
    if required:
        raise FormatError(f"LUKS2 requirement {', '.join(map(str, required))} is not supported "
                          "(a reencryption in progress?)")
    json_size = _get(config, "json_size", int, "config")
    if json_size != fields[2] - BINARY_SIZE:
        raise FormatError("LUKS2 metadata: config.json_size does not match the header size")
    keyslots_size = _get(config, "keyslots_size", int, "config")

    segments = meta["segments"]
    if len(segments) != 1:
        raise FormatError(f"LUKS2 with {len(segments)} segments is not supported "
                          "(a reencryption in progress?)")
    (sid, seg), = segments.items()
    where = f"segments.{sid}"
    if not sid.isdigit() or _get(seg, "type", str, where) != "crypt":
        raise FormatError(f"LUKS2 segment {sid} is not a crypt segment")
    if seg.get("integrity"):
        raise FormatError("LUKS2 integrity (AEAD) segments are not supported")
    size = seg.get("size")
    segment = Segment(_get(seg, "offset", int, where),
                      None if size == "dynamic" else _get(seg, "size", int, where),
                      _get(seg, "iv_tweak", int, where), _get(seg, "encryption", str, where),
                      _get(seg, "sector_size", int, where))
    parse_spec(segment.encryption)
    try:
        check_sector_size(segment.sector_size)
    except Exception:
        raise FormatError(f"LUKS2 segment sector size {segment.sector_size} is invalid") from None
    if segment.offset % SECTOR:
        raise FormatError("LUKS2 segment offset is not sector aligned")

    keyslots = {}
    for kid, ks in meta["keyslots"].items():
        where = f"keyslots.{kid}"
        if not kid.isdigit() or int(kid) >= MAX_KEYSLOTS:
            raise FormatError(f"LUKS2 key slot id '{kid}' is invalid")
        kind = _get(ks, "type", str, where)
        if kind == "reencrypt":
            raise FormatError("LUKS2 reencryption in progress is not supported")
        if kind != "luks2":
            continue                        # unknown slot types cannot open the volume
        afo, area = _get(ks, "af", dict, where), _get(ks, "area", dict, where)
        if _get(afo, "type", str, where + ".af") != "luks1" or \
                _get(area, "type", str, where + ".area") != "raw":
            continue
        slot = Keyslot(int(kid), _get(ks, "key_size", int, where),
                       _get(afo, "stripes", int, where + ".af"),
                       _get(afo, "hash", str, where + ".af"),
                       _get(area, "offset", int, where + ".area"),
                       _get(area, "size", int, where + ".area"),
                       _get(area, "encryption", str, where + ".area"),
                       _get(area, "key_size", int, where + ".area"),
                       _kdf(_get(ks, "kdf", dict, where), where + ".kdf"),
                       ks.get("priority", 1) if ks.get("priority") in (0, 1, 2) else 1)
        if not 1 <= slot.stripes <= 1 << 16 or not 1 <= slot.key_size <= 512 or \
                padded(slot.key_size * slot.stripes) > slot.area_size or \
                slot.area_offset < KEYSLOTS_OFFSET or \
                slot.area_offset + slot.area_size > fields[2] * 2 + keyslots_size:
            raise FormatError(f"LUKS2 key slot {kid} area is inconsistent")
        if slot.af_hash not in hashlib.algorithms_available:
            raise FormatError(f"LUKS2 key slot {kid} AF hash '{slot.af_hash}' is not available")
        keyslots[slot.id] = slot

    digests = []
    for did, d in meta["digests"].items():
        where = f"digests.{did}"
        if _get(d, "type", str, where) != "pbkdf2":
            continue
        digest = Digest(_ids(d, "keyslots", where), _ids(d, "segments", where),
                        _get(d, "hash", str, where), _get(d, "iterations", int, where),
                        _b64(d, "salt", where), _b64(d, "digest", where))
        Kdf("pbkdf2", digest.salt, digest.iterations, digest.hash).check()
        digests.append(digest)
    return Luks2Header(fields[2], fields[3], _text(fields[7]), _text(fields[4]), _text(fields[5]),
                       meta, keyslots, int(sid), segment, digests, keyslots_size)


# --- unlocking ---------------------------------------------------------------------------

def unlock(header: Luks2Header, read_at: ReadAt, passphrase: Secret,
           slot: int | None = None) -> tuple[Secret, int]:
    """The volume key of the crypt segment and the slot that opened it."""
    digests = [d for d in header.digests if header.segment_id in d.segments]
    usable = {k: s for k, s in header.keyslots.items() if any(k in d.keyslots for d in digests)}
    if slot is not None:
        if slot not in usable:
            raise KeyMaterialError(f"key slot {slot} is not an active key slot of this volume")
        order = [usable[slot]]
    else:
        order = sorted((s for s in usable.values() if s.priority),
                       key=lambda s: (-s.priority, s.id))
    for ks in order:
        with ks.kdf.derive(passphrase, ks.area_key_size) as area_key:
            raw = read_material(read_at, ks.area_offset, ks.key_size * ks.stripes,
                                f"LUKS2 key slot {ks.id}")
            material = crypt_area(Op.DECRYPT, ks.area_encryption, area_key, raw)
        key = af.merge(material, ks.key_size, ks.stripes, ks.af_hash)
        material[:] = bytes(len(material))
        for d in digests:
            if ks.id in d.keyslots and pbkdf2_digest(d.hash, key, d.salt, d.iterations,
                                                     len(d.digest)) == d.digest:
                return key, ks.id
        key.wipe()
    raise WrongPassphrase("No key available with this passphrase.")


# --- creating ----------------------------------------------------------------------------

def _binary(magic: bytes, hdr_offset: int, seqid: int, uid: str, metadata: dict) -> bytes:
    text = json.dumps(metadata, separators=(",", ":")).encode()
    json_size = HDR_SIZES[0] - BINARY_SIZE
    if len(text) >= json_size:
        raise FormatError("LUKS2 metadata does not fit the JSON area")
    fields = (magic, VERSION, HDR_SIZES[0], seqid, b"", b"sha256", os.urandom(64), uid.encode(),
              b"", hdr_offset, b"", b"")
    area = bytearray(BINARY.pack(*fields) + bytes(BINARY_SIZE - BINARY.size))
    area += text + bytes(json_size - len(text))
    area[CSUM_OFFSET:CSUM_OFFSET + 32] = hashlib.sha256(area).digest()
    return bytes(area)


def create(key: Secret, cipher: str, sector_size: int, passphrase: Secret, kdf: Kdf,
           digest_iterations: int, hash_name: str, detached: bool) -> tuple[Luks2Header, dict]:
    """A new header pair with ``key`` in slot 0: (header, {byte offset: bytes to write}).

    Layout as cryptsetup's defaults: copies at 0 and 16 KiB, key slots from 32 KiB, data at
    16 MiB (at 0 of the data device with a detached header)."""
    spec = parse_spec(cipher)
    spec.check_key_bits(len(key) * 8)
    check_sector_size(sector_size)
    area_size = -(-padded(len(key) * STRIPES) // AREA_ALIGN) * AREA_ALIGN
    keyslots_size = DATA_OFFSET - KEYSLOTS_OFFSET
    kdf_json = ({"type": "pbkdf2", "hash": kdf.hash, "iterations": kdf.iterations}
                if kdf.kind == "pbkdf2" else
                {"type": kdf.kind, "time": kdf.iterations, "memory": kdf.memory,
                 "cpus": kdf.parallel})
    kdf_json["salt"] = base64.b64encode(kdf.salt).decode()
    digest_salt = os.urandom(SALT_SIZE)
    metadata = {
        "keyslots": {"0": {
            "type": "luks2", "key_size": len(key),
            "af": {"type": "luks1", "stripes": STRIPES, "hash": hash_name},
            "area": {"type": "raw", "offset": str(KEYSLOTS_OFFSET), "size": str(area_size),
                     "encryption": cipher, "key_size": len(key)},
            "kdf": kdf_json}},
        "tokens": {},
        "segments": {"0": {"type": "crypt", "offset": str(0 if detached else DATA_OFFSET),
                           "size": "dynamic", "iv_tweak": "0", "encryption": cipher,
                           "sector_size": sector_size}},
        "digests": {"0": {
            "type": "pbkdf2", "keyslots": ["0"], "segments": ["0"], "hash": hash_name,
            "iterations": digest_iterations, "salt": base64.b64encode(digest_salt).decode(),
            "digest": base64.b64encode(pbkdf2_digest(hash_name, key, digest_salt,
                                                     digest_iterations, DIGEST_SIZE)).decode()}},
        "config": {"json_size": str(HDR_SIZES[0] - BINARY_SIZE),
                   "keyslots_size": str(keyslots_size)},
    }
    with kdf.derive(passphrase, len(key)) as area_key:
        material = af.split(key, STRIPES, hash_name)
        material += bytes(padded(len(material)) - len(material))
        encrypted = crypt_area(Op.ENCRYPT, cipher, area_key, material)
    uid = str(uuidlib.uuid4())
    writes = {
        0: _binary(MAGIC_PRIMARY, 0, 1, uid, metadata),
        HDR_SIZES[0]: _binary(MAGIC_SECONDARY, HDR_SIZES[0], 1, uid, metadata),
        KEYSLOTS_OFFSET: bytes(encrypted) + bytes(keyslots_size - len(encrypted)),
    }
    header = read(lambda off, n: _slice(writes, off, n))
    return header, writes


def _slice(writes: dict[int, bytes], offset: int, length: int) -> bytes:
    """Read back from the pending writes (create() parses what it made, as a check)."""
    for start, data in writes.items():
        if start <= offset and offset + length <= start + len(data):
            return data[offset - start:offset - start + length]
    return b""


# --- showing -----------------------------------------------------------------------------

def dump(header: Luks2Header) -> str:
    """What ``cryptsetup luksDump`` shows for a LUKS2 header."""
    s = header.segment
    lines = ["LUKS header information", "Version:       \t2",
             f"Epoch:         \t{header.seqid}",
             f"Metadata area: \t{header.hdr_size - BINARY_SIZE} [bytes]",
             f"Keyslots area: \t{header.keyslots_size} [bytes]",
             f"UUID:          \t{header.uuid}",
             f"Label:         \t{header.label or '(no label)'}", "",
             "Data segments:", f"  {header.segment_id}: crypt",
             f"\toffset: {s.offset} [bytes]",
             f"\tlength: {'(whole device)' if s.size is None else f'{s.size} [bytes]'}",
             f"\tcipher: {s.encryption}", f"\tsector: {s.sector_size} [bytes]", "",
             "Keyslots:"]
    for ks in sorted(header.keyslots.values(), key=lambda k: k.id):
        lines += [f"  {ks.id}: luks2", f"\tKey:        {ks.key_size * 8} bits",
                  f"\tPriority:   {('ignored', 'normal', 'high')[ks.priority]}",
                  f"\tCipher:     {ks.area_encryption}",
                  f"\tCipher key: {ks.area_key_size * 8} bits",
                  f"\tPBKDF:      {ks.kdf.kind}"]
        if ks.kdf.kind == "pbkdf2":
            lines += [f"\tHash:       {ks.kdf.hash}", f"\tIterations: {ks.kdf.iterations}"]
        else:
            lines += [f"\tTime cost:  {ks.kdf.iterations}", f"\tMemory:     {ks.kdf.memory}",
                      f"\tThreads:    {ks.kdf.parallel}"]
        lines += [f"\tAF stripes: {ks.stripes}", f"\tAF hash:    {ks.af_hash}",
                  f"\tArea offset:{ks.area_offset} [bytes]",
                  f"\tArea length:{ks.area_size} [bytes]"]
    lines.append("Digests:")
    for i, d in enumerate(header.digests):
        lines += [f"  {i}: pbkdf2", f"\tHash:       {d.hash}", f"\tIterations: {d.iterations}"]
    return "\n".join(lines)
