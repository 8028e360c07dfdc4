"""LUKS1: the phdr, eight key slots (PBKDF2 + anti-forensic split), the volume key digest.

On-disk layout (LUKS1 on-disk format specification 1.2.3), every integer big-endian — declared
once, by name, in :data:`PHDR` and :data:`KEYSLOT`:

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

A change rewrites the 592-byte header whole, in one write.  Key slot changes write the new
material to a free slot's area before the header enables it, and disable a slot before its
material is wiped.
"""

import os
import uuid as uuidlib
from dataclasses import dataclass, replace

from cryptfs.core.geometry import SECTOR
from cryptfs.crypto import hashes
from cryptfs.crypto.keys import Secret
from cryptfs.crypto.spec import parse_spec
from cryptfs.errors import ConfigError, FormatError, KeyMaterialError, SpecError, WrongPassphrase
from cryptfs.formats.binary import Record
from cryptfs.formats.kdf import Kdf, pbkdf2_digest
from cryptfs.formats.keyslot_area import header_spec, padded, seal, unseal
from cryptfs.formats.protocol import LuksHeader, ReadAt, Segment

MAGIC = b"LUKS\xba\xbe"
PHDR = Record("Phdr", [
    ("magic", "6s"), ("version", "H"), ("cipher_name", "32s"), ("cipher_mode", "32s"),
    ("hash", "32s"), ("payload_offset", "I"), ("key_bytes", "I"), ("mk_digest", "20s"),
    ("mk_salt", "32s"), ("mk_iterations", "I"), ("uuid", "40s"),
], text=frozenset({"cipher_name", "cipher_mode", "hash", "uuid"}))
KEYSLOT = Record("KeyslotRecord", [
    ("state", "I"), ("iterations", "I"), ("salt", "32s"), ("material_offset", "I"),
    ("stripes", "I"),
])
KEYSLOTS = 8
HEADER_SIZE = PHDR.size + KEYSLOTS * KEYSLOT.size           # 592
SLOT_ACTIVE, SLOT_INACTIVE = 0x00AC71F3, 0x0000DEAD
SALT_SIZE = 32
MK_DIGEST_SIZE = 20
STRIPES = 4000
ALIGN_SECTORS = 8              # key material is 4 KiB aligned
PAYLOAD_ALIGN_SECTORS = 2048   # the payload starts on a 1 MiB boundary
PAGE = 4096


@dataclass(frozen=True)
class Keyslot:
    active: bool
    iterations: int
    salt: bytes
    material_offset: int       # sectors
    stripes: int

    @classmethod
    def unpack(cls, data: bytes, offset: int) -> "Keyslot":
        r = KEYSLOT.unpack(data, offset)
        return cls(r.state == SLOT_ACTIVE, r.iterations, r.salt, r.material_offset, r.stripes)

    def pack(self) -> bytes:
        return KEYSLOT.pack(KEYSLOT.type(
            state=SLOT_ACTIVE if self.active else SLOT_INACTIVE, iterations=self.iterations,
            salt=self.salt, material_offset=self.material_offset, stripes=self.stripes))


#: the phdr fields a header holds as they are (all but magic and version)
FIELDS = PHDR.type._fields[2:]


@dataclass(frozen=True)
class Luks1Header(LuksHeader):
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

    KIND, VERSION, MAX_SLOTS = "luks1", 1, KEYSLOTS
    KDF_KINDS, DEFAULT_KDF = ("pbkdf2",), "pbkdf2"
    OFFSET_FIELD = "LUKS1 payload offset"

    # --- the binary header ---------------------------------------------------------------

    @classmethod
    def unpack(cls, data: bytes) -> "Luks1Header":
        """The phdr's fields, unchecked (magic and version are :meth:`parse`'s)."""
        phdr = PHDR.unpack(data)._asdict()
        slots = tuple(Keyslot.unpack(data, PHDR.size + i * KEYSLOT.size)
                      for i in range(KEYSLOTS))
        return cls(**{name: phdr[name] for name in FIELDS}, keyslots=slots)

    def pack(self) -> bytes:
        phdr = PHDR.type(magic=MAGIC, version=self.VERSION,
                         **{name: getattr(self, name) for name in FIELDS})
        return PHDR.pack(phdr) + b"".join(ks.pack() for ks in self.keyslots)

    # --- the protocol's facts ------------------------------------------------------------

    @property
    def cipher(self) -> str:
        return f"{self.cipher_name}-{self.cipher_mode}"

    @property
    def segment(self) -> Segment:
        return Segment(self.payload_offset * SECTOR, None, 0, self.cipher, SECTOR)

    metadata_size = HEADER_SIZE

    @property
    def areas_size(self) -> int:
        return max(ks.material_offset for ks in self.keyslots) * SECTOR + \
            self.material_sectors() * SECTOR

    @property
    def layout(self) -> tuple:
        return self.payload_offset, self.key_bytes

    def material_sectors(self) -> int:
        """Sectors of one key slot's material (cryptsetup's AF_split_sectors)."""
        return padded(self.key_bytes * STRIPES) // SECTOR

    def backup_blanks(self) -> list[tuple[int, int]]:
        """The rest of the first 4 KiB when the key material starts there, so that a backup
        carries no stale signature."""
        first = min(ks.material_offset for ks in self.keyslots) * SECTOR
        return [(HEADER_SIZE, PAGE)] if first == PAGE else []

    # --- reading -------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes) -> "Luks1Header":
        """A phdr checked as cryptsetup 2.6 checks it (lib/luks1/keymanage.c): magic, version,
        a hash whose HMAC is at least 20 bytes, and all eight key slots — 4000 stripes, key
        material past the phdr, below the payload, not overlapping.  FormatError naming the
        field otherwise.  Whether cryptfs can run the cipher is :meth:`check_supported`'s
        question."""
        if len(data) < HEADER_SIZE:
            raise FormatError(f"LUKS1 header truncated ({len(data)} of {HEADER_SIZE} bytes)")
        phdr = PHDR.unpack(data)
        if phdr.magic != MAGIC:
            raise FormatError("not a LUKS1 header")
        if phdr.version != cls.VERSION:
            raise FormatError(f"LUKS1 header version {phdr.version} is not supported")
        header = cls.unpack(data)
        _check_hash(header.hash)
        header._check_keyslots()
        if not header.key_bytes:
            raise FormatError("LUKS1 key-bytes is 0")
        return header

    def _check_keyslots(self) -> None:
        """cryptsetup's LUKS_check_keyslots, with its 32-bit sector arithmetic."""
        sectors = self.material_sectors() & 0xFFFFFFFF
        payload = self.payload_offset
        for i, ks in enumerate(self.keyslots):
            where = f"LUKS1 key slot {i}"
            if ks.stripes != STRIPES:
                raise FormatError(f"{where} has {ks.stripes} AF stripes (must be {STRIPES})")
            if ks.material_offset * SECTOR & 0xFFFFFFFF < HEADER_SIZE:
                raise FormatError(f"{where} key material offset {ks.material_offset} is inside "
                                  "the header")
            if payload and (payload <= ks.material_offset or
                            payload < (ks.material_offset + sectors) & 0xFFFFFFFF):
                raise FormatError(f"{where} key material [{ks.material_offset}, "
                                  f"{ks.material_offset + sectors}) reaches the payload at "
                                  f"sector {payload}")
        ordered = sorted(range(KEYSLOTS), key=lambda i: self.keyslots[i].material_offset)
        for prev, nxt in zip(ordered, ordered[1:]):
            a, b = self.keyslots[prev].material_offset, self.keyslots[nxt].material_offset
            if b < (a + sectors) & 0xFFFFFFFF:
                raise FormatError(f"LUKS1 key slot {prev} key material [{a}, {a + sectors}) "
                                  f"overlaps key slot {nxt}'s at {b}")

    @classmethod
    def read(cls, read_at: ReadAt) -> "Luks1Header":
        """:meth:`parse` the phdr, and check the file holds every key slot's material."""
        header = cls.parse(read_at(0, HEADER_SIZE))
        need = header.areas_size
        if len(read_at(need - 1, 1)) < 1:
            raise FormatError(f"the file is too small: LUKS1 requires at least {need} bytes "
                              "(the header and its key material)")
        return header

    def check_supported(self) -> None:
        """SpecError or FormatError for a valid phdr cryptfs cannot open: the cipher, its key
        size, the volume key digest's parameters."""
        spec = header_spec(self.cipher)
        spec.check_key_bits(self.key_bytes * 8)
        Kdf("pbkdf2", self.mk_salt, self.mk_iterations, self.hash).check()

    # --- key slots -----------------------------------------------------------------------

    def active_slots(self) -> list[int]:
        return [i for i, ks in enumerate(self.keyslots) if ks.active]

    def unlock(self, read_at: ReadAt, passphrase: Secret,
               slot: int | None = None) -> tuple[Secret, int]:
        candidates = [slot] if slot is not None else range(KEYSLOTS)
        if slot is not None and not (0 <= slot < KEYSLOTS and self.keyslots[slot].active):
            raise KeyMaterialError(f"key slot {slot} is not active")
        for i in candidates:
            ks = self.keyslots[i]
            if not ks.active:
                continue
            key = unseal(read_at, ks.material_offset * SECTOR, passphrase,
                         Kdf("pbkdf2", ks.salt, ks.iterations, self.hash), self.cipher,
                         self.key_bytes, self.key_bytes, ks.stripes, self.hash,
                         f"LUKS1 key slot {i}")
            if self._is_volume_key(key):
                return key, i
            key.wipe()
        raise WrongPassphrase("No key available with this passphrase.")

    def _is_volume_key(self, key: Secret) -> bool:
        return pbkdf2_digest(self.hash, key, self.mk_salt, self.mk_iterations,
                             MK_DIGEST_SIZE) == self.mk_digest

    def _seal(self, key: Secret, passphrase: Secret, kdf: Kdf) -> bytearray:
        """(LUKS1: the header's cipher and hash for every slot.)"""
        return seal(key, passphrase, kdf, self.cipher, self.key_bytes, STRIPES, self.hash)

    def add_slot(self, f, slot: int, key: Secret, passphrase: Secret, kdf: Kdf, unlocked: int,
                 af_hash: str) -> "Luks1Header":
        return self._enable(f, slot, self._seal(key, passphrase, kdf), kdf)

    def change_slot(self, f, slot: int, key: Secret, passphrase: Secret, kdf: Kdf,
                    af_hash: str, keep_slot: bool) -> tuple["Luks1Header", int]:
        """Through the first free slot: enabled there, ``slot`` disabled; with ``keep_slot``,
        back to ``slot`` the same way."""
        free = self.check_new_slot(None)
        sealed = self._seal(key, passphrase, kdf)
        header = self._enable(f, free, sealed, kdf).kill_slot(f, slot)
        if not keep_slot:
            return header, free
        return header._enable(f, slot, sealed, kdf).kill_slot(f, free), slot

    def kill_slot(self, f, slot: int) -> "Luks1Header":
        ks = self.keyslots[slot]
        header = self._with_slot(f, slot, replace(ks, active=False, iterations=0,
                                                  salt=bytes(SALT_SIZE)))
        f.wipe(ks.material_offset * SECTOR, padded(self.key_bytes * ks.stripes))
        return header

    def _enable(self, f, slot: int, sealed: bytearray, kdf: Kdf) -> "Luks1Header":
        ks = self.keyslots[slot]         # every slot's area validated on reading
        f.write(ks.material_offset * SECTOR, sealed)
        return self._with_slot(f, slot, replace(ks, active=True, iterations=kdf.iterations,
                                                salt=kdf.salt, stripes=STRIPES))

    def _with_slot(self, f, slot: int, ks: Keyslot) -> "Luks1Header":
        return self.write(f, keyslots=self.keyslots[:slot] + (ks,) + self.keyslots[slot + 1:])

    # --- writing -------------------------------------------------------------------------

    def write(self, f, **changes) -> "Luks1Header":
        header = replace(self, **changes)
        f.write(0, header.pack())
        return header

    @classmethod
    def check_sector_size(cls, sector_size: int) -> None:
        super().check_sector_size(sector_size)
        if sector_size != SECTOR:
            raise ConfigError("LUKS1 has 512-byte sectors only; use --type luks2 for "
                              f"--sector-size {sector_size}")

    @staticmethod
    def slot_layout(key_bytes: int) -> tuple[int, int, int]:
        """cryptsetup's layout: (first slot sector, sectors per slot, payload sector)."""
        slot_sectors = -(-padded(key_bytes * STRIPES) // SECTOR // ALIGN_SECTORS) * ALIGN_SECTORS
        end = ALIGN_SECTORS + KEYSLOTS * slot_sectors
        return ALIGN_SECTORS, slot_sectors, \
            -(-end // PAYLOAD_ALIGN_SECTORS) * PAYLOAD_ALIGN_SECTORS

    @classmethod
    def default_data_offset(cls, key_bytes: int) -> int:
        return cls.slot_layout(key_bytes)[2] * SECTOR

    @classmethod
    def create(cls, key: Secret, cipher: str, sector_size: int, passphrase: Secret, kdf: Kdf,
               digest_iterations: int, hash_name: str,
               detached: bool) -> tuple["Luks1Header", dict[int, bytes]]:
        """(LUKS1: ``kdf.hash`` is the header's hash, for every slot and the digest.)"""
        _check_hash(kdf.hash)
        spec = parse_spec(cipher)
        spec.check_key_bits(len(key) * 8)
        name, _, mode = cipher.partition("-")
        if spec.ivmode == "plain64be" or len(name) >= 32 or len(mode) >= 32:
            raise SpecError(f"cipher {cipher} cannot be stored in a LUKS1 header")
        first, slot_sectors, payload = cls.slot_layout(len(key))
        mk_salt = os.urandom(SALT_SIZE)
        slots = tuple(Keyslot(False, 0, bytes(SALT_SIZE), first + i * slot_sectors, STRIPES)
                      for i in range(KEYSLOTS))
        header = cls(name, mode, kdf.hash, 0 if detached else payload, len(key),
                     pbkdf2_digest(kdf.hash, key, mk_salt, digest_iterations, MK_DIGEST_SIZE),
                     mk_salt, digest_iterations, str(uuidlib.uuid4()), slots)
        sealed = header._seal(key, passphrase, kdf)
        slot0 = replace(slots[0], active=True, iterations=kdf.iterations, salt=kdf.salt)
        header = replace(header, keyslots=(slot0,) + slots[1:])
        area_end = (first + KEYSLOTS * slot_sectors) * SECTOR
        return header, {0: header.pack() + bytes(area_end - HEADER_SIZE),
                        slot0.material_offset * SECTOR: bytes(sealed)}

    # --- showing -------------------------------------------------------------------------

    def dump(self, path: str) -> str:
        lines = [
            f"LUKS header information for {path}", "",
            "Version:       \t1",
            f"Cipher name:   \t{self.cipher_name}",
            f"Cipher mode:   \t{self.cipher_mode}",
            f"Hash spec:     \t{self.hash}",
            f"Payload offset:\t{self.payload_offset}",
            f"MK bits:       \t{self.key_bytes * 8 & 0xFFFFFFFF}",
            f"MK digest:     \t{_hex(self.mk_digest)}",
            f"MK salt:       \t{_hex(self.mk_salt[:16])}",
            f"               \t{_hex(self.mk_salt[16:])}",
            f"MK iterations: \t{self.mk_iterations}",
            f"UUID:          \t{self.uuid}", "",
        ]
        for i, ks in enumerate(self.keyslots):
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


def _check_hash(name: str) -> None:
    """FormatError unless ``name`` is a hash cryptfs has, of at least MK_DIGEST_SIZE bytes
    (cryptsetup's rule for a LUKS1 hash-spec: its HMAC makes the volume key digest)."""
    try:
        size = hashes.new(name).digest_size
    except SpecError as e:
        raise FormatError(f"LUKS1 hash-spec: {e}") from None
    if size < MK_DIGEST_SIZE:
        raise FormatError(f"LUKS1 hash-spec {name!r} is not a hash of at least "
                          f"{MK_DIGEST_SIZE} bytes here")


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data) + " "
