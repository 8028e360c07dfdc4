"""LUKS2: two header copies (binary header and JSON metadata, :mod:`.disk`), key slots,
digests, one crypt segment — read, unlocked, created and changed as cryptsetup does.

Reading: each copy is validated on its own (:mod:`.validate`); the valid copy with the higher
seqid is used, and the other one is named ``damaged`` with a warning.  When neither is valid,
:class:`DamagedHeader` carries each copy's :class:`~.disk.DamagedCopy`.

Writing (lib/luks2/luks2_disk_metadata.c): every copy is made by one function — the binary
header and the JSON area (json-c's text, :func:`.jsonc.on_disk`) with its checksum — and parsed
back by the reader before anything is written.  An update (:meth:`Luks2Header.write`) raises
the seqid by one and writes the primary copy whole, then the secondary.  A copy cut short fails
its checksum, so a reader always finds one whole copy: the old one until the primary is
complete, the new one after.  Before an update, a copy that is damaged or older than the other
is rewritten from the newer one with a fresh salt (cryptsetup's recovery); otherwise a key slot
area free in the newer copy could still be in use by the older one, which a reader falls back
to if the update is cut short.  So a key slot change repairs first, then writes the new
material, then the header.
"""

import copy as copying
import os
import uuid as uuidlib
from dataclasses import dataclass, field, replace

from cryptfs.core.geometry import SECTOR, check_sector_size
from cryptfs.crypto.keys import Secret
from cryptfs.crypto.spec import parse_spec
from cryptfs.errors import CryptfsError, FormatError, KeyMaterialError, WrongPassphrase
from cryptfs.formats.kdf import KINDS, Kdf
from cryptfs.formats.keyslot_area import header_spec, seal, unseal
from cryptfs.formats.luks2 import dump as luks2_dump
from cryptfs.formats.luks2 import jsonc
from cryptfs.formats.luks2 import keyslots as slot_json
from cryptfs.formats.luks2 import validate as luks2_validate
from cryptfs.formats.luks2.disk import (
    BINARY,
    BINARY_SIZE,
    HDR_SIZES,
    MAGICS,
    SALT_SIZE,
    VERSION,
    DamagedCopy,
    MissingCopy,
    pack_copy,
    read_copy,
)
from cryptfs.formats.luks2.keyslots import STRIPES, Digest, Keyslot
from cryptfs.formats.luks2.validate import atoi, uint64
from cryptfs.formats.protocol import LuksHeader, ReadAt, Segment

COPIES = ("primary", "secondary")
KEYSLOTS_OFFSET = 2 * HDR_SIZES[0]                       # after both 16 KiB copies
DATA_OFFSET = 16 << 20                                   # cryptsetup's default


class DamagedHeader(FormatError):
    """Neither header copy is valid; ``copies`` holds each one's :class:`DamagedCopy`.  Where
    both fail the same JSON check (their JSON is the same), the reason is said once."""

    def __init__(self, copies: dict[str, DamagedCopy]):
        self.copies = copies
        primary, secondary = copies["primary"], copies["secondary"]
        if primary.in_json and secondary.in_json and primary.reason == secondary.reason:
            detail = f"both: {primary.reason}"
        else:
            detail = f"{primary}; {secondary}"
        super().__init__(f"both LUKS2 headers are damaged ({detail})")


@dataclass
class Luks2Header(LuksHeader):
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

    KIND, VERSION, MAX_SLOTS = "luks2", VERSION, 32       # cryptsetup's LUKS2_KEYSLOTS_MAX
    KDF_KINDS, DEFAULT_KDF = KINDS, "argon2id"
    OFFSET_FIELD = "LUKS2 segment 0 offset"

    # --- the protocol's facts ------------------------------------------------------------

    @property
    def cipher_name(self) -> str:
        return self._cipher.partition("-")[0]

    @property
    def cipher_mode(self) -> str:
        return self._cipher.partition("-")[2]

    @property
    def _cipher(self) -> str:
        return self.segment.encryption if self.segment else "null"

    @property
    def payload_offset(self) -> int:
        return luks2_validate.min_segment_offset(self.metadata["segments"]) // SECTOR

    @property
    def metadata_size(self) -> int:
        return 2 * self.hdr_size

    @property
    def areas_size(self) -> int:
        return luks2_validate.hdr_and_areas_size(self.metadata)

    @property
    def layout(self) -> tuple:
        return self.payload_offset, self.areas_size

    # --- reading -------------------------------------------------------------------------

    @classmethod
    def read(cls, read_at: ReadAt) -> "Luks2Header":
        """Each copy validated on its own as cryptsetup does; the valid copy with the higher
        seqid is used.  ``damaged`` names a copy that is invalid or older, and a warning says
        so.  :class:`DamagedHeader` if neither copy is valid; FormatError if the header file
        is too small."""
        copies, errors, offsets = {}, {}, HDR_SIZES
        try:
            fields, area = read_copy(read_at, 0, "primary")
        except DamagedCopy as e:
            errors["primary"] = e
        else:
            offsets = (fields.hdr_size,)          # where the primary says the secondary is
            try:
                copies["primary"] = (fields, _metadata(area, "primary"))
            except DamagedCopy as e:
                errors["primary"] = e
        for offset in offsets:               # when the primary is unreadable, probe for it
            try:
                fields, area = read_copy(read_at, offset, "secondary")
            except DamagedCopy as e:
                if len(offsets) == 1 or not isinstance(e, MissingCopy):
                    errors.setdefault("secondary", e)
                continue
            errors.pop("secondary", None)
            try:
                copies["secondary"] = (fields, _metadata(area, "secondary"))
            except DamagedCopy as e:
                errors["secondary"] = e
            break
        if "secondary" not in copies and "secondary" not in errors:
            errors["secondary"] = MissingCopy("secondary")
        if not copies:
            raise DamagedHeader(errors)
        if len(copies) == 2:
            seqids = {name: fields.seqid for name, (fields, _) in copies.items()}
            older = "secondary" if seqids["primary"] >= seqids["secondary"] else "primary"
            if seqids["primary"] != seqids["secondary"]:
                errors[older] = DamagedCopy(f"its seqid {seqids[older]} is older", older,
                                            "older")
            del copies[older]
        fields, meta = next(iter(copies.values()))
        header = _view(fields, meta)
        need = header.areas_size
        if len(read_at(need - 1, 1)) < 1:
            raise FormatError(f"the file is too small: its LUKS2 headers and key slots area "
                              f"need {need} bytes")
        if errors:
            header.damaged = next(iter(errors))
            header.warnings.append(f"the {header.damaged} LUKS2 header is damaged "
                                   f"({errors[header.damaged]}); using the other copy — "
                                   "'cryptsetup repair' can restore it")
        return header

    def check_supported(self) -> None:
        """FormatError (or SpecError) for a valid header that cryptfs cannot open:
        reencryption, several segments, integrity, unsupported ciphers or sector sizes."""
        required = luks2_validate.mandatory(self.metadata)
        if required:
            raise FormatError(f"LUKS2 requirement {', '.join(map(str, required))!r} is not "
                              "supported (a reencryption in progress?)")
        segments = self.metadata["segments"]
        if len(segments) != 1:
            raise FormatError(f"LUKS2 with {len(segments)} segments is not supported "
                              "(a reencryption in progress?)")
        if self.segment is None:
            raise FormatError(f"LUKS2 segment 0 is a {segments['0']['type']!r} segment, not "
                              "crypt")
        if "integrity" in segments["0"]:
            raise FormatError("LUKS2 integrity (AEAD) segments are not supported")
        header_spec(self.segment.encryption)
        try:
            check_sector_size(self.segment.sector_size)
        except CryptfsError:
            raise FormatError(f"LUKS2 segment sector size {self.segment.sector_size} is not "
                              "supported") from None

    # --- key slots -----------------------------------------------------------------------

    def active_slots(self) -> list[int]:
        return sorted(atoi(k) for k in self.metadata["keyslots"])

    def unlock(self, read_at: ReadAt, passphrase: Secret,
               slot: int | None = None) -> tuple[Secret, int]:
        """The volume key of the crypt segment and the slot that opened it; preferred slots
        first, ignored ones only when named."""
        digests = [d for d in self.digests if self.segment_id in d.segments]
        usable = {k: s for k, s in self.keyslots.items()
                  if any(k in d.keyslots for d in digests)}
        if slot is not None:
            if slot in self.unusable:
                raise FormatError(self.unusable[slot])
            if slot not in usable:
                raise KeyMaterialError(f"key slot {slot} is not an active key slot of this "
                                       "volume")
            order = [usable[slot]]
        else:
            order = [s for priority in (2, 1) for s in sorted(usable.values(), key=lambda s: s.id)
                     if s.priority == priority]
        for ks in order:
            key = unseal(read_at, ks.area_offset, passphrase, ks.kdf, ks.area_encryption,
                         ks.area_key_size, ks.key_size, ks.stripes, ks.af_hash,
                         f"LUKS2 key slot {ks.id}")
            if any(ks.id in d.keyslots and d.matches(key) for d in digests):
                return key, ks.id
            key.wipe()
        raise WrongPassphrase("No key available with this passphrase.")

    def add_slot(self, f, slot: int, key: Secret, passphrase: Secret, kdf: Kdf, unlocked: int,
                 af_hash: str) -> "Luks2Header":
        """(LUKS2: the new slot joins the digest of ``unlocked``.)"""
        meta = copying.deepcopy(self.metadata)
        digest = self._digest_of(meta, unlocked)
        meta["keyslots"][str(slot)] = self._sealed_slot(f, meta, key, passphrase, kdf, af_hash)
        digest["keyslots"].append(str(slot))
        return self.write(f, metadata=meta)

    def change_slot(self, f, slot: int, key: Secret, passphrase: Secret, kdf: Kdf,
                    af_hash: str, keep_slot: bool) -> tuple["Luks2Header", int]:
        """(LUKS2 always keeps the slot id: one update swaps the new area in.)"""
        meta = copying.deepcopy(self.metadata)
        name = slot_json.named(meta["keyslots"], slot)
        old = meta["keyslots"][name]
        new = self._sealed_slot(f, meta, key, passphrase, kdf, af_hash)
        if "priority" in old:
            new["priority"] = old["priority"]
        meta["keyslots"][name] = new
        header = self.write(f, metadata=meta)
        _wipe(f, old)
        return header, slot

    def kill_slot(self, f, slot: int) -> "Luks2Header":
        """(LUKS2: digests and tokens forget the slot; they stay, as in cryptsetup.)"""
        meta = copying.deepcopy(self.metadata)
        old = meta["keyslots"].pop(slot_json.named(meta["keyslots"], slot))
        for group in ("digests", "tokens"):
            for item in meta.get(group, {}).values():
                if isinstance(item, dict) and isinstance(item.get("keyslots"), list):
                    item["keyslots"] = [k for k in item["keyslots"]
                                        if not slot_json.names(k, slot)]
        header = self.write(f, metadata=meta)
        _wipe(f, old)
        return header

    def _digest_of(self, meta: dict, slot: int) -> dict:
        for digest in meta["digests"].values():
            if any(slot_json.names(k, slot) for k in digest.get("keyslots", [])) and \
                    any(slot_json.names(k, self.segment_id) for k in digest.get("segments", [])):
                return digest
        raise FormatError(f"LUKS2 key slot {slot} has no digest of the data segment")

    def _sealed_slot(self, f, meta: dict, key: Secret, passphrase: Secret, kdf: Kdf,
                     af_hash: str) -> dict:
        """Write the key material to a free area (after repairing a stale copy that may still
        use it); the key slot object that describes it."""
        self._salts(f)
        cipher = self.segment.encryption
        offset, size = slot_json.free_area(meta, 2 * self.hdr_size, len(key))
        f.write(offset, seal(key, passphrase, kdf, cipher, len(key), STRIPES, af_hash))
        return slot_json.keyslot_json(len(key), offset, size, cipher, af_hash, kdf)

    # --- writing -------------------------------------------------------------------------

    def write(self, f, **changes) -> "Luks2Header":
        salts = self._salts(f)
        new = replace(self, seqid=self.seqid + 1, **changes)
        areas = [new._copy(i, salts[i]) for i in range(2)]
        for i, area in enumerate(areas):
            f.write(i * self.hdr_size, area)
        return _view(new._binary(0, salts[0]), new.metadata)

    def _binary(self, i: int, salt: bytes) -> tuple:
        """Copy ``i``'s (0 primary, 1 secondary) binary fields."""
        return BINARY.type(magic=MAGICS[COPIES[i]], version=VERSION, hdr_size=self.hdr_size,
                           seqid=self.seqid, label=self.label, checksum_alg=self.csum_alg,
                           salt=salt, uuid=self.uuid, subsystem=self.subsystem,
                           hdr_offset=i * self.hdr_size)

    def _copy(self, i: int, salt: bytes) -> bytes:
        return _packed(self._binary(i, salt), self.metadata)

    def _salts(self, f) -> list[bytes]:
        """Each copy's salt, after rewriting a copy on ``f`` that is not this header (damaged
        or older) from this header with a fresh salt; FormatError if neither copy is it."""
        current = []
        for i, name in enumerate(COPIES):
            try:
                fields, area = read_copy(f.read_at, i * self.hdr_size, name)
                _metadata(area, name)
            except DamagedCopy:
                fields = None
            current.append(fields if fields and fields.seqid == self.seqid and
                           fields.hdr_size == self.hdr_size else None)
        if not any(current):
            raise FormatError(f"{f.path}: no LUKS2 header copy of {self.hdr_size} bytes at 0 "
                              "or after it matches the metadata read ('cryptsetup repair'?)")
        salts = []
        for i, fields in enumerate(current):
            if fields is None:
                salts.append(os.urandom(SALT_SIZE))
                f.write(i * self.hdr_size, self._copy(i, salts[-1]))
            else:
                salts.append(fields.salt)
        return salts

    # --- creating ------------------------------------------------------------------------

    @classmethod
    def default_data_offset(cls, key_bytes: int) -> int:
        return DATA_OFFSET

    @classmethod
    def create(cls, key: Secret, cipher: str, sector_size: int, passphrase: Secret, kdf: Kdf,
               digest_iterations: int, hash_name: str,
               detached: bool) -> tuple["Luks2Header", dict[int, bytes]]:
        """Copies at 0 and 16 KiB, key slots from 32 KiB, data at 16 MiB (at 0 of the data
        device with a detached header); ``hash_name`` for the splitter and the digest."""
        spec = parse_spec(cipher)
        spec.check_key_bits(len(key) * 8)
        check_sector_size(sector_size)
        hdr_size = HDR_SIZES[0]
        keyslots_size = DATA_OFFSET - KEYSLOTS_OFFSET
        meta = {
            "keyslots": {},
            "tokens": {},
            "segments": {"0": {"type": "crypt", "offset": str(0 if detached else DATA_OFFSET),
                               "size": "dynamic", "iv_tweak": "0", "encryption": cipher,
                               "sector_size": sector_size}},
            "digests": {"0": slot_json.digest_json(key, hash_name, digest_iterations, ["0"],
                                                  ["0"])},
            "config": {"json_size": str(hdr_size - BINARY_SIZE),
                       "keyslots_size": str(keyslots_size)},
        }
        offset, size = slot_json.free_area(meta, 2 * hdr_size, len(key))
        sealed = seal(key, passphrase, kdf, cipher, len(key), STRIPES, hash_name)
        meta["keyslots"]["0"] = slot_json.keyslot_json(len(key), offset, size, cipher,
                                                      hash_name, kdf)
        fields = BINARY.type(magic=MAGICS["primary"], version=VERSION, hdr_size=hdr_size,
                             seqid=1, checksum_alg="sha256", uuid=str(uuidlib.uuid4()))
        header = _view(fields, meta)
        writes = {i * hdr_size: header._copy(i, os.urandom(SALT_SIZE)) for i in range(2)}
        writes[KEYSLOTS_OFFSET] = bytes(sealed) + bytes(keyslots_size - len(sealed))
        return header, writes

    # --- showing -------------------------------------------------------------------------

    def dump(self, path: str) -> str:
        """(LUKS2: ``path`` is not part of it.)"""
        return luks2_dump.dump(self)


def _metadata(area: bytes, copy: str) -> dict:
    """The copy's JSON, parsed by json-c and validated as cryptsetup does."""
    try:
        meta, compact = jsonc.parse_area(area[BINARY_SIZE:])
        luks2_validate.validate(meta, len(area) - BINARY_SIZE, compact)
    except FormatError as e:
        raise DamagedCopy.json(copy, str(e)) from None
    return meta


def _packed(fields: tuple, metadata: dict) -> bytes:
    """A copy as cryptsetup writes it, checked by the reader; FormatError (DamagedCopy)
    otherwise, before anything is written."""
    area = bytes(pack_copy(fields, jsonc.on_disk(metadata).encode("utf-8", "surrogateescape")))
    copy, start = COPIES[fields.hdr_offset != 0], fields.hdr_offset
    read_copy(lambda offset, n: area[offset - start:offset - start + n], start, copy)
    _metadata(area, copy)
    return area


def _view(fields: tuple, meta: dict) -> Luks2Header:
    """The typed view of a validated copy: what cryptfs can use of it."""
    usable, unusable = {}, {}
    for kid, ks in meta["keyslots"].items():
        if ks["type"] != "luks2":
            continue
        slot, problem = slot_json.keyslot_of(int(kid), ks)
        if problem:
            unusable[int(kid)] = f"LUKS2 key slot {kid} cannot be used: {problem}"
        else:
            usable[slot.id] = slot
    digests = [d for d in map(slot_json.digest_of, meta["digests"].values()) if d]
    seg = meta["segments"].get("0", {})
    segment = None
    if seg.get("type") == "crypt":
        size = seg["size"]
        segment = Segment(uint64(seg["offset"]), None if size == "dynamic" else uint64(size),
                          uint64(seg["iv_tweak"]), seg["encryption"], seg["sector_size"])
    return Luks2Header(fields.hdr_size, fields.seqid, fields.uuid, fields.label,
                       fields.checksum_alg, meta, usable, 0, segment, digests,
                       uint64(meta["config"]["keyslots_size"]), subsystem=fields.subsystem,
                       unusable=unusable)


def _wipe(f, keyslot: dict) -> None:
    offset, length = slot_json.area_of(keyslot)
    if length:
        f.wipe(offset, length)
