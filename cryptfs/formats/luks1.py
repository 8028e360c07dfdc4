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
from .kdf import Kdf, new_hash, pbkdf2_digest
from .keyslot_area import crypt_area, header_spec, padded, read_material

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
        """Sectors of one key slot's material (cryptsetup's AF_split_sectors)."""
        return padded(self.key_bytes * STRIPES) // 512

    def pack(self) -> bytes:
        def raw(text: str) -> bytes:
            return text.encode("utf-8", "surrogateescape")
        out = PHDR.pack(MAGIC, VERSION, raw(self.cipher_name), raw(self.cipher_mode),
                        raw(self.hash), self.payload_offset, self.key_bytes, self.mk_digest,
                        self.mk_salt, self.mk_iterations, raw(self.uuid))
        for ks in self.keyslots:
            out += KEYSLOT.pack(SLOT_ACTIVE if ks.active else SLOT_INACTIVE, ks.iterations,
                                ks.salt, ks.material_offset, ks.stripes)
        return out


def _text(raw: bytes) -> str:
    """A NUL-padded field as C reads it: up to the first NUL, never its last byte."""
    return raw[:-1].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def parse(data: bytes) -> Luks1Header:
    """A phdr checked as cryptsetup 2.6 checks it (lib/luks1/keymanage.c): magic, version, a
    hash whose HMAC is at least 20 bytes, and all eight key slots — 4000 stripes, key material
    past the phdr, below the payload, not overlapping.  FormatError naming the field otherwise.
    Whether cryptfs can run the cipher is :func:`check_supported`'s question."""
    if len(data) < HEADER_SIZE:
        raise FormatError(f"LUKS1 header truncated ({len(data)} of {HEADER_SIZE} bytes)")
    (magic, version, name, mode, hash_, payload, key_bytes, digest, salt, mk_iter,
     uuid) = PHDR.unpack_from(data)
    if magic != MAGIC:
        raise FormatError("not a LUKS1 header")
    if version != VERSION:
        raise FormatError(f"LUKS1 header version {version} is not supported")
    slots = []
    for i in range(KEYSLOTS):
        state, iters, ks_salt, offset, stripes = KEYSLOT.unpack_from(
            data, PHDR.size + i * KEYSLOT.size)
        slots.append(Keyslot(state == SLOT_ACTIVE, iters, ks_salt, offset, stripes))
    header = Luks1Header(_text(name), _text(mode), _text(hash_), payload, key_bytes, digest,
                         salt, mk_iter, _text(uuid), tuple(slots))
    hash_bytes = getattr(new_hash(header.hash), "digest_size", 0)
    if hash_bytes < MK_DIGEST_SIZE:
        raise FormatError(f"LUKS1 hash-spec {header.hash!r} is not a hash of at least "
                          f"{MK_DIGEST_SIZE} bytes here")
    _check_keyslots(header)
    if not key_bytes:
        raise FormatError("LUKS1 key-bytes is 0")
    return header


def _check_keyslots(header: Luks1Header) -> None:
    """cryptsetup's LUKS_check_keyslots, with its 32-bit sector arithmetic."""
    sectors = header.material_sectors() & 0xFFFFFFFF
    payload = header.payload_offset
    for i, ks in enumerate(header.keyslots):
        where = f"LUKS1 key slot {i}"
        if ks.stripes != STRIPES:
            raise FormatError(f"{where} has {ks.stripes} AF stripes (must be {STRIPES})")
        if ks.material_offset * 512 & 0xFFFFFFFF < HEADER_SIZE:
            raise FormatError(f"{where} key material offset {ks.material_offset} is inside "
                              "the header")
        if payload and (payload <= ks.material_offset or
                        payload < (ks.material_offset + sectors) & 0xFFFFFFFF):
            raise FormatError(f"{where} key material [{ks.material_offset}, "
                              f"{ks.material_offset + sectors}) reaches the payload at "
                              f"sector {payload}")
    ordered = sorted(range(KEYSLOTS), key=lambda i: header.keyslots[i].material_offset)
    for prev, nxt in zip(ordered, ordered[1:]):
        a, b = header.keyslots[prev].material_offset, header.keyslots[nxt].material_offset
        if b < (a + sectors) & 0xFFFFFFFF:
            raise FormatError(f"LUKS1 key slot {prev} key material [{a}, {a + sectors}) "
                              f"overlaps key slot {nxt}'s at {b}")


def read(read_at: ReadAt) -> Luks1Header:
    """:func:`parse` the phdr, and check the file holds every key slot's material."""
    header = parse(read_at(0, HEADER_SIZE))
    need = (max(ks.material_offset for ks in header.keyslots) + header.material_sectors()) * 512
    if len(read_at(need - 1, 1)) < 1:
        raise FormatError(f"the file is too small: LUKS1 requires at least {need} bytes "
                          "(the header and its key material)")
    return header


def check_supported(header: Luks1Header) -> None:
    """SpecError or FormatError for a valid phdr cryptfs cannot open: the cipher, its key
    size, the volume key digest's parameters."""
    spec = header_spec(header.cipher)
    spec.check_key_bits(header.key_bytes * 8)
    Kdf("pbkdf2", header.mk_salt, header.mk_iterations, header.hash).check()


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


def dump(header: Luks1Header, path: str) -> str:
    """What ``cryptsetup luksDump PATH`` prints for a LUKS1 header."""
    lines = [
        f"LUKS header information for {path}", "",
        "Version:       \t1",
        f"Cipher name:   \t{header.cipher_name}",
        f"Cipher mode:   \t{header.cipher_mode}",
        f"Hash spec:     \t{header.hash}",
        f"Payload offset:\t{header.payload_offset}",
        f"MK bits:       \t{header.key_bytes * 8 & 0xFFFFFFFF}",
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
    return "\n".join(lines) + "\n"


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data) + " "
