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
from typing import Callable

from backends.base import Op

from ..errors import CryptfsError, FormatError, KeyMaterialError, WrongPassphrase
from ..geometry import check_sector_size
from ..keys import Secret
from ..spec import parse_spec
from . import af, jsonc, luks2_dump, luks2_validate
from .jsonc import get_int
from .kdf import PBKDF2_MAX_ITERATIONS, Kdf, new_hash, pbkdf2_digest
from .keyslot_area import crypt_area, header_spec, padded, read_material
from .luks2_validate import b64decode, uint64

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
    priority: int = 1         # 0 ignore, 1 normal, 2 preferred (cryptsetup tries 2, then 1)


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
    """A header copy cryptsetup accepts.  ``metadata`` is its JSON; ``keyslots`` and
    ``digests`` are the ones cryptfs can use (``unusable`` says why the other luks2 key slots
    are not); ``segment`` is crypt segment 0 (None if segment 0 is not a crypt segment)."""
    hdr_size: int
    seqid: int
    uuid: str
    label: str
    csum_alg: str
    metadata: dict
    keyslots: dict[int, Keyslot]
    segment_id: int
    segment: Segment | None
    digests: list[Digest]
    keyslots_size: int
    warnings: list[str] = field(default_factory=list)
    subsystem: str = ""
    damaged: str | None = None          # "primary" or "secondary": that copy is not valid
    unusable: dict[int, str] = field(default_factory=dict)


# --- reading -----------------------------------------------------------------------------

def _text(raw: bytes) -> str:
    """A NUL-terminated field (its last byte always ends it, as in cryptsetup)."""
    return raw[:-1].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _read_binary(read_at: ReadAt, offset: int, secondary: bool) -> tuple[tuple, bytes]:
    """One copy's binary header and whole area, checked as cryptsetup checks them before the
    JSON: magic, version, offset, size, checksum.  FormatError otherwise."""
    which = f"{'secondary' if secondary else 'primary'} LUKS2 header at {offset}"
    raw = read_at(offset, BINARY_SIZE)
    if len(raw) < BINARY_SIZE:
        raise FormatError(f"the {which} is truncated")
    fields = BINARY.unpack_from(raw)
    magic, version, hdr_size, hdr_offset = fields[0], fields[1], fields[2], fields[9]
    if magic != (MAGIC_SECONDARY if secondary else MAGIC_PRIMARY):
        raise FormatError(f"no {which}")
    if version != VERSION:
        raise FormatError(f"the {which} has version {version}, not 2")
    if hdr_offset != offset:
        raise FormatError(f"the {which} says it is at {hdr_offset}")
    if not HDR_SIZES[0] <= hdr_size <= HDR_SIZES[-1]:
        raise FormatError(f"the {which} has a size of {hdr_size} (allowed 16 KiB .. 4 MiB)")
    if secondary and hdr_size != offset:
        raise FormatError(f"the {which} has a size of {hdr_size}: it must start where the "
                          "primary ends")
    area = read_at(offset, hdr_size)
    if len(area) < hdr_size:
        raise FormatError(f"the {which} is truncated")
    h = new_hash(_text(fields[5]))
    if h is None:
        raise FormatError(f"the {which} has checksum algorithm {_text(fields[5])!r}, which "
                          "is not available")
    h.update(area[:CSUM_OFFSET] + bytes(CSUM_SIZE) + area[CSUM_OFFSET + CSUM_SIZE:])
    if fields[11][:h.digest_size] != h.digest():
        raise FormatError(f"the {which} has a bad checksum")
    return fields, area


def _read_metadata(fields: tuple, area: bytes) -> dict:
    """The copy's JSON, parsed by json-c and validated as cryptsetup does."""
    where = f"{'secondary' if fields[0] == MAGIC_SECONDARY else 'primary'} LUKS2 header"
    try:
        meta, compact = jsonc.parse_area(area[BINARY_SIZE:])
        luks2_validate.validate(meta, len(area) - BINARY_SIZE, compact)
    except FormatError as e:
        raise FormatError(f"the {where}: {e}") from None
    return meta


def read(read_at: ReadAt) -> Luks2Header:
    """The LUKS2 header, each copy validated on its own as cryptsetup does; the valid copy with
    the higher seqid is used.  ``damaged`` names a copy that is invalid or older, and a warning
    says so.  FormatError if neither copy is valid or the header file is too small."""
    copies, errors, offsets = {}, {}, HDR_SIZES
    try:
        fields, area = _read_binary(read_at, 0, secondary=False)
    except FormatError as e:
        errors["primary"] = str(e)
    else:
        offsets = (fields[2],)          # where the primary says the secondary is
        try:
            copies["primary"] = (fields, _read_metadata(fields, area))
        except FormatError as e:
            errors["primary"] = str(e)
    for offset in offsets:
        try:
            fields, area = _read_binary(read_at, offset, secondary=True)
        except FormatError as e:
            if len(offsets) == 1 or not str(e).startswith("no "):
                errors.setdefault("secondary", str(e))
            continue
        errors.pop("secondary", None)
        try:
            copies["secondary"] = (fields, _read_metadata(fields, area))
        except FormatError as e:
            errors["secondary"] = str(e)
        break
    if "secondary" not in copies and "secondary" not in errors:
        errors["secondary"] = "no secondary LUKS2 header at any of the known offsets"
    if not copies:
        reasons = {e.replace("the primary LUKS2 header: ", "").replace(
            "the secondary LUKS2 header: ", "") for e in errors.values()}
        raise FormatError("both LUKS2 headers are damaged (" + (
            f"both: {reasons.pop()}" if len(reasons) == 1 else "; ".join(errors.values())) + ")")
    if len(copies) == 2:
        seqids = {name: copy[0][3] for name, copy in copies.items()}
        older = "secondary" if seqids["primary"] >= seqids["secondary"] else "primary"
        if seqids["primary"] != seqids["secondary"]:
            errors[older] = f"its seqid {seqids[older]} is older"
        del copies[older]
    fields, meta = next(iter(copies.values()))
    need = luks2_validate.hdr_and_areas_size(meta)
    if len(read_at(need - 1, 1)) < 1:
        raise FormatError(f"the file is too small: its LUKS2 headers and key slots area need "
                          f"{need} bytes")
    header = _header(fields, meta)
    if errors:
        header.damaged = next(iter(errors))
        header.warnings.append(f"the {header.damaged} LUKS2 header is damaged "
                               f"({errors[header.damaged]}); using the other copy — "
                               "'cryptsetup repair' can restore it")
    return header


def _header(fields: tuple, meta: dict) -> Luks2Header:
    """The typed view of a validated copy: what cryptfs can use of it."""
    keyslots, unusable = {}, {}
    for kid, ks in meta["keyslots"].items():
        if ks["type"] != "luks2":
            continue
        slot, problem = _keyslot(int(kid), ks)
        if problem:
            unusable[int(kid)] = f"LUKS2 key slot {kid} cannot be used: {problem}"
        else:
            keyslots[slot.id] = slot
    digests = [d for d in map(_digest, meta["digests"].values()) if d]
    seg = meta["segments"].get("0", {})
    segment = None
    if seg.get("type") == "crypt":
        size = seg["size"]
        segment = Segment(uint64(seg["offset"]), None if size == "dynamic" else uint64(size),
                          uint64(seg["iv_tweak"]), seg["encryption"], seg["sector_size"])
    return Luks2Header(fields[2], fields[3], _text(fields[7]), _text(fields[4]),
                       _text(fields[5]), meta, keyslots, 0, segment, digests,
                       uint64(meta["config"]["keyslots_size"]), subsystem=_text(fields[8]),
                       unusable=unusable)


def _keyslot(kid: int, ks: dict) -> tuple[Keyslot | None, str | None]:
    """A validated luks2 key slot as cryptfs runs it, or why it cannot run it."""
    kdf_json, af, area = ks["kdf"], ks["af"], ks["area"]
    salt = b64decode(kdf_json.get("salt"))
    if salt is None:
        return None, "its kdf salt is not base64"
    kind = kdf_json["type"]
    if kind == "pbkdf2":
        kdf = Kdf(kind, salt, kdf_json["iterations"], kdf_json["hash"])
    elif kind in ("argon2i", "argon2id"):
        kdf = Kdf(kind, salt, kdf_json["time"], memory=kdf_json["memory"],
                  parallel=kdf_json["cpus"])
    else:
        return None, f"key derivation {kind!r} is not supported"
    priority = get_int(ks["priority"]) if "priority" in ks else 1
    slot = Keyslot(kid, ks["key_size"], af["stripes"], af["hash"], uint64(area["offset"]),
                   uint64(area["size"]), area["encryption"], area["key_size"], kdf, priority)
    try:
        kdf.check()
        spec = header_spec(slot.area_encryption)
        spec.check_key_bits(slot.area_key_size * 8)
    except CryptfsError as e:
        return None, str(e)
    if not 1 <= slot.stripes <= 1 << 16 or not 1 <= slot.key_size <= 512 or \
            padded(slot.key_size * slot.stripes) > slot.area_size:
        return None, (f"{slot.key_size} key bytes × {slot.stripes} stripes do not fit its "
                      f"{slot.area_size}-byte area")
    if new_hash(slot.af_hash) is None:
        return None, f"AF hash {slot.af_hash!r} is not available"
    return slot, None


def _digest(d: dict) -> Digest | None:
    """A pbkdf2 digest cryptfs can check keys against; None for anything else."""
    salt, value = b64decode(d.get("salt")), b64decode(d.get("digest"))
    hash_name, iterations = d.get("hash"), d.get("iterations")
    if d["type"] != "pbkdf2" or salt is None or not value or not isinstance(hash_name, str) \
            or new_hash(hash_name) is None or not luks2_validate.is_a(iterations, int) \
            or not 1 <= iterations <= PBKDF2_MAX_ITERATIONS:
        return None
    ids = [frozenset(int(i) for i in d[k] if i and luks2_validate.numbered(i))
           for k in ("keyslots", "segments")]
    return Digest(ids[0], ids[1], hash_name, iterations, salt, value)


def check_supported(header: Luks2Header) -> None:
    """FormatError (or SpecError) for a valid header that cryptfs cannot open: reencryption,
    several segments, integrity, unsupported ciphers or sector sizes."""
    required = luks2_validate.mandatory(header.metadata)
    if required:
        raise FormatError(f"LUKS2 requirement {', '.join(map(str, required))!r} is not supported "
                          "(a reencryption in progress?)")
    segments = header.metadata["segments"]
    if len(segments) != 1:
        raise FormatError(f"LUKS2 with {len(segments)} segments is not supported "
                          "(a reencryption in progress?)")
    if header.segment is None:
        raise FormatError(f"LUKS2 segment 0 is a {segments['0']['type']!r} segment, not crypt")
    if "integrity" in segments["0"]:
        raise FormatError("LUKS2 integrity (AEAD) segments are not supported")
    header_spec(header.segment.encryption)
    try:
        check_sector_size(header.segment.sector_size)
    except CryptfsError:
        raise FormatError(f"LUKS2 segment sector size {header.segment.sector_size} is not "
                          "supported") from None


# --- unlocking ---------------------------------------------------------------------------

def unlock(header: Luks2Header, read_at: ReadAt, passphrase: Secret,
           slot: int | None = None) -> tuple[Secret, int]:
    """The volume key of the crypt segment and the slot that opened it."""
    digests = [d for d in header.digests if header.segment_id in d.segments]
    usable = {k: s for k, s in header.keyslots.items() if any(k in d.keyslots for d in digests)}
    if slot is not None:
        if slot in header.unusable:
            raise FormatError(header.unusable[slot])
        if slot not in usable:
            raise KeyMaterialError(f"key slot {slot} is not an active key slot of this volume")
        order = [usable[slot]]
    else:
        order = [s for priority in (2, 1) for s in sorted(usable.values(), key=lambda s: s.id)
                 if s.priority == priority]
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


# --- showing ---------------------------------------------------------------------------

def dump(header: Luks2Header, path: str) -> str:
    """What ``cryptsetup luksDump`` prints for a LUKS2 header (``path`` is not part of it)."""
    return luks2_dump.dump(header)
