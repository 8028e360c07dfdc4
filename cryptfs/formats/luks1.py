"""LUKS1: the phdr, eight key slots (PBKDF2 + anti-forensic split), the volume key digest.

On-disk layout (LUKS1 on-disk format specification 1.2.3), every integer big-endian:

=======  ====  ===================================================================
offset   size  field
=======  ====  ===================================================================
0        6     magic ``LUKS\\xba\\xbe``
6        2     version (1)
8        32    cipher-name (``aes``), NUL-padded
40       32    cipher-mode (``xts-plain64``, ``cbc-essiv:sha256``), NUL-padded
72       32    hash-spec (PBKDF2 and AF hash), NUL-padded
104      4     payload-offset, 512-byte sectors
108      4     key-bytes (volume key length)
112      20    mk-digest = PBKDF2(hash, volume key, mk-digest-salt, mk-digest-iter, 20)
132      32    mk-digest-salt
164      4     mk-digest-iter
168      40    uuid, NUL-padded
208      8×48  key slots: active (0x00AC71F3 / 0x0000DEAD), iterations, salt[32],
               key-material-offset (sectors), stripes
=======  ====  ===================================================================
"""

import os
import struct
import uuid as uuidlib
from dataclasses import dataclass, replace
from typing import Callable

from backends.base import Op

from ..errors import FormatError, KeyMaterialError, SpecError, WrongPassphrase
from ..keys import Secret
from ..spec import parse_spec
from . import af
from .kdf import Kdf, pbkdf2_digest
from .keyslot_area import crypt_area, padded, read_material

MAGIC = b"LUKS\xba\xbe"
VERSION = 1
PHDR = struct.Struct(">6sH32s32s32sII20s32sI40s")
KEYSLOT = struct.Struct(">II32sII")
KEYSLOTS = 8
HEADER_SIZE = PHDR.size + KEYSLOTS * KEYSLOT.size           # 592
SLOT_ACTIVE, SLOT_INACTIVE = 0x00AC71F3, 0x0000DEAD
SALT_SIZE = 32
MK_DIGEST_SIZE = 20
STRIPES = 4000
ALIGN_SECTORS = 8              # key material is 4 KiB aligned
PAYLOAD_ALIGN_SECTORS = 2048   # the payload starts on a 1 MiB boundary
_MAX_STRIPES = 1 << 16         # beyond any real image; guards against hostile headers

ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Keyslot:
    active: bool
    iterations: int
    salt: bytes
    material_offset: int       # sectors
    stripes: int


@dataclass(frozen=True)
class Luks1Header:
    cipher_name: str
    cipher_mode: str
    hash: str
    payload_offset: int        # sectors
    key_bytes: int
    mk_digest: bytes
    mk_salt: bytes
    mk_iterations: int
    uuid: str
    keyslots: tuple[Keyslot, ...]

    @property
    def cipher(self) -> str:
        return f"{self.cipher_name}-{self.cipher_mode}"

    def material_sectors(self) -> int:
        return padded(self.key_bytes * STRIPES) // 512

    def pack(self) -> bytes:
        out = PHDR.pack(MAGIC, VERSION, self.cipher_name.encode(), self.cipher_mode.encode(),
                        self.hash.encode(), self.payload_offset, self.key_bytes, self.mk_digest,
                        self.mk_salt, self.mk_iterations, self.uuid.encode())
        for ks in self.keyslots:
            out += KEYSLOT.pack(SLOT_ACTIVE if ks.active else SLOT_INACTIVE, ks.iterations,
                                ks.salt, ks.material_offset, ks.stripes)
        return out


def _text(raw: bytes, field: str) -> str:
    text = raw.split(b"\0", 1)[0]
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"LUKS1 header field {field} is not ASCII") from None


def parse(data: bytes) -> Luks1Header:
    """Parse and sanity-check a phdr; FormatError (or SpecError) if it is not one we can use."""
    if len(data) < HEADER_SIZE:
        raise FormatError(f"LUKS1 header truncated ({len(data)} of {HEADER_SIZE} bytes)")
    (magic, version, name, mode, hash_, payload, key_bytes, digest, salt, mk_iter,
     uuid) = PHDR.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise FormatError("not a LUKS1 header")
    slots = []
    for i in range(KEYSLOTS):
        active, iters, ks_salt, offset, stripes = KEYSLOT.unpack_from(
            data, PHDR.size + i * KEYSLOT.size)
        if active not in (SLOT_ACTIVE, SLOT_INACTIVE):
            raise FormatError(f"LUKS1 key slot {i} has an invalid state {active:#x}")
        slots.append(Keyslot(active == SLOT_ACTIVE, iters, ks_salt, offset, stripes))
    header = Luks1Header(_text(name, "cipher-name"), _text(mode, "cipher-mode"),
                         _text(hash_, "hash-spec"), payload, key_bytes, digest, salt, mk_iter,
                         _text(uuid, "uuid"), tuple(slots))
    spec = parse_spec(header.cipher)
    spec.check_key_bits(key_bytes * 8)
    Kdf("pbkdf2", salt, max(mk_iter, 1), header.hash).check()
    for i, ks in enumerate(header.keyslots):
        if not ks.active:
            continue
        if not 1 <= ks.stripes <= _MAX_STRIPES or ks.iterations == 0:
            raise FormatError(f"LUKS1 key slot {i} has invalid parameters")
        end = ks.material_offset + padded(key_bytes * ks.stripes) // 512
        if ks.material_offset * 512 < HEADER_SIZE or (payload and end > payload):
            raise FormatError(f"LUKS1 key slot {i} material overlaps the header or the payload")
    return header


def unlock(header: Luks1Header, read_at: ReadAt, passphrase: Secret,
           slot: int | None = None) -> tuple[Secret, int]:
    """The volume key and the slot that opened it; KeyMaterialError if none does."""
    candidates = [slot] if slot is not None else range(KEYSLOTS)
    if slot is not None and not (0 <= slot < KEYSLOTS and header.keyslots[slot].active):
        raise KeyMaterialError(f"key slot {slot} is not active")
    for i in candidates:
        ks = header.keyslots[i]
        if not ks.active:
            continue
        kdf = Kdf("pbkdf2", ks.salt, ks.iterations, header.hash)
        with kdf.derive(passphrase, header.key_bytes) as slot_key:
            raw = read_material(read_at, ks.material_offset * 512, header.key_bytes * ks.stripes,
                                f"LUKS1 key slot {i}")
            material = crypt_area(Op.DECRYPT, header.cipher, slot_key, raw)
        key = af.merge(material, header.key_bytes, ks.stripes, header.hash)
        material[:] = bytes(len(material))
        if pbkdf2_digest(header.hash, key, header.mk_salt, header.mk_iterations,
                         MK_DIGEST_SIZE) == header.mk_digest:
            return key, i
        key.wipe()
    raise WrongPassphrase("No key available with this passphrase.")


def layout(key_bytes: int) -> tuple[int, int, int]:
    """cryptsetup's layout: (first slot sector, sectors per slot, payload sector)."""
    slot_sectors = -(-padded(key_bytes * STRIPES) // 512 // ALIGN_SECTORS) * ALIGN_SECTORS
    end = ALIGN_SECTORS + KEYSLOTS * slot_sectors
    return ALIGN_SECTORS, slot_sectors, -(-end // PAYLOAD_ALIGN_SECTORS) * PAYLOAD_ALIGN_SECTORS


def create(key: Secret, cipher: str, passphrase: Secret, kdf: Kdf, digest_iterations: int,
           detached: bool) -> tuple[Luks1Header, dict[int, bytes]]:
    """A new header with ``key`` in slot 0: (header, {byte offset: bytes to write})."""
    spec = parse_spec(cipher)
    spec.check_key_bits(len(key) * 8)
    name, _, mode = cipher.partition("-")
    if spec.ivmode == "plain64be" or len(name) >= 32 or len(mode) >= 32:
        raise SpecError(f"cipher {cipher} cannot be stored in a LUKS1 header")
    first, slot_sectors, payload = layout(len(key))
    payload = 0 if detached else payload
    mk_salt = os.urandom(SALT_SIZE)
    slots = tuple(Keyslot(False, 0, bytes(SALT_SIZE), first + i * slot_sectors, STRIPES)
                  for i in range(KEYSLOTS))
    header = Luks1Header(name, mode, kdf.hash, payload, len(key),
                         pbkdf2_digest(kdf.hash, key, mk_salt, digest_iterations, MK_DIGEST_SIZE),
                         mk_salt, digest_iterations, str(uuidlib.uuid4()), slots)
    with kdf.derive(passphrase, len(key)) as slot_key:
        material = af.split(key, STRIPES, kdf.hash)
        material += bytes(padded(len(material)) - len(material))
        encrypted = crypt_area(Op.ENCRYPT, cipher, slot_key, material)
    slot0 = replace(slots[0], active=True, iterations=kdf.iterations, salt=kdf.salt)
    header = replace(header, keyslots=(slot0,) + slots[1:])
    area_end = (first + KEYSLOTS * slot_sectors) * 512
    writes = {0: header.pack() + bytes(area_end - HEADER_SIZE)}
    writes[slot0.material_offset * 512] = bytes(encrypted)
    return header, writes


def dump(header: Luks1Header) -> str:
    """What ``cryptsetup luksDump`` shows for a LUKS1 header."""
    lines = [
        "LUKS header information", "",
        "Version:       \t1",
        f"Cipher name:   \t{header.cipher_name}",
        f"Cipher mode:   \t{header.cipher_mode}",
        f"Hash spec:     \t{header.hash}",
        f"Payload offset:\t{header.payload_offset}",
        f"MK bits:       \t{header.key_bytes * 8}",
        f"MK digest:     \t{_hex(header.mk_digest)}",
        f"MK salt:       \t{_hex(header.mk_salt[:16])}",
        f"               \t{_hex(header.mk_salt[16:])}",
        f"MK iterations: \t{header.mk_iterations}",
        f"UUID:          \t{header.uuid}", "",
    ]
    for i, ks in enumerate(header.keyslots):
        if not ks.active:
            lines.append(f"Key Slot {i}: DISABLED")
            continue
        lines += [f"Key Slot {i}: ENABLED",
                  f"\tIterations:         \t{ks.iterations}",
                  f"\tSalt:               \t{_hex(ks.salt[:16])}",
                  f"\t                      \t{_hex(ks.salt[16:])}",
                  f"\tKey material offset:\t{ks.material_offset}",
                  f"\tAF stripes:            \t{ks.stripes}"]
    return "\n".join(lines)


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data) + " "
