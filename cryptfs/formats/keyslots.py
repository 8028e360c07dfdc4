"""Key slots: add a passphrase, change one, remove one — LUKS1 and LUKS2, written as
cryptsetup writes them and in an order that an interruption (SIGKILL, power loss) at any point
leaves an image that opens with the old passphrases or with the new ones.

* add: the new slot's key material goes to an area no slot uses, then the header refers to it;
* change: the new material goes to a free area first; then the header swaps it in (LUKS2: one
  update of the same slot id; LUKS1: the free slot is enabled, then the old one disabled —
  two writes, so a torn sector never loses both); then the old material is wiped;
* remove: the header forgets the slot, then its material is wiped.

Where cryptsetup would overwrite a slot's only copy in place (every LUKS1 slot or every LUKS2
area in use), cryptfs refuses instead.  A LUKS1 change with ``-S N`` keeps slot N, as
cryptsetup does, by moving the new material through a free slot.

The header is read and the passphrase checked under cryptsetup's shared lock (:func:`load`);
changes happen under its exclusive lock, after checking the header did not change meanwhile
(:func:`editing`).
"""

import base64
import contextlib
import copy
from dataclasses import dataclass, replace

from backends.base import Op

from ..errors import BusyError, CryptfsError, FormatError
from ..keys import Secret
from . import af, luks, luks1, luks2, luks2_validate
from .kdf import Kdf
from .keyslot_area import crypt_area, padded
from .lock import Holder, MetadataLock
from .metadata import Luks2Writer, WritableHeader, write_luks1


@dataclass
class Loaded:
    """A header as read under the shared lock; ``raw`` is its metadata, to notice changes."""
    path: str
    module: object              # luks1 or luks2
    header: object
    raw: bytes

    @property
    def version(self) -> str:
        return "luks1" if self.module is luks1 else "luks2"

    def slots(self) -> list[int]:
        """Active key slot numbers."""
        if self.module is luks1:
            return [i for i, ks in enumerate(self.header.keyslots) if ks.active]
        return sorted(luks2_validate.atoi(k) for k in self.header.metadata["keyslots"])



def _metadata_size(module, header) -> int:
    return luks1.HEADER_SIZE if module is luks1 else 2 * header.hdr_size


def load(path: str, wanted: str = "luks") -> Loaded:
    """Read the header under cryptsetup's shared lock."""
    with MetadataLock(path, exclusive=False), luks.HeaderFile(path) as hdr:
        module, header = luks.read_header(hdr, wanted)
        return Loaded(path, module, header, hdr.read_at(0, _metadata_size(module, header)))


def unlock(loaded: Loaded, passphrase: Secret, slot: int | None = None) -> tuple[Secret, int]:
    """(volume key, slot) for ``passphrase``; KeyMaterialError if it opens no slot."""
    with MetadataLock(loaded.path, exclusive=False), luks.HeaderFile(loaded.path) as hdr:
        return loaded.module.unlock(loaded.header, hdr.read_at, passphrase, slot)


@contextlib.contextmanager
def editing(loaded: Loaded, holder: Holder | None = None):
    """The header file open for writing under cryptsetup's exclusive lock; BusyError if an
    open cryptfs device holds it or the header changed since ``loaded`` was read."""
    with MetadataLock(loaded.path, exclusive=True, holder=holder), WritableHeader(loaded.path) as f:
        if f.read_at(0, len(loaded.raw)) != loaded.raw:
            raise BusyError(f"the header of {loaded.path} changed while this command ran "
                            "(another cryptsetup or cryptfs?); nothing was written, try again")
        yield f


def slots_of(loaded: Loaded) -> "Slots":
    return (Luks1Slots if loaded.module is luks1 else Luks2Slots)(loaded)


class Slots:
    """Key slot changes on one header (the subclass knows the version)."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded

    def check_new(self, slot: int | None) -> int:
        """The slot a new passphrase goes to (``slot``, or the first free one); CryptfsError
        if it is taken or out of range, or none is free."""
        free = self.free_slots()
        if slot is None:
            if not free:
                raise CryptfsError(f"all {self.MAX} key slots are in use; remove one first "
                                   "(luksKillSlot)")
            return free[0]
        if not 0 <= slot < self.MAX:
            raise CryptfsError(f"key slot {slot} is invalid, please select between 0 and "
                               f"{self.MAX - 1}")
        if slot not in free:
            raise CryptfsError(f"Key slot {slot} is full, please select another one.")
        return slot

    def check_active(self, slot: int) -> None:
        if slot not in self.loaded.slots():
            raise CryptfsError(f"Keyslot {slot} is not active.")

    def free_slots(self) -> list[int]:
        return [i for i in range(self.MAX) if i not in self.loaded.slots()]


def _seal(key: Secret, passphrase: Secret, kdf: Kdf, cipher: str, area_key_bytes: int,
          stripes: int, af_hash: str) -> bytes:
    """The key slot material: ``key`` split over ``stripes`` and encrypted with the key
    derived from ``passphrase``."""
    with kdf.derive(passphrase, area_key_bytes) as area_key:
        material = af.split(key, stripes, af_hash)
        material += bytes(padded(len(material)) - len(material))
        return bytes(crypt_area(Op.ENCRYPT, cipher, area_key, material))


class Luks1Slots(Slots):
    MAX = luks1.KEYSLOTS

    def add(self, f: WritableHeader, slot: int, key: Secret, passphrase: Secret, kdf: Kdf,
            unlocked: int, af_hash: str) -> None:
        """``passphrase`` opens ``key`` from ``slot``.  (LUKS1: one digest, and the header's
        hash splits the key.)"""
        h = self.loaded.header
        sealed = _seal(key, passphrase, kdf, h.cipher, h.key_bytes, luks1.STRIPES, h.hash)
        self._enable(f, slot, sealed, kdf.iterations, kdf.salt)

    def change(self, f: WritableHeader, old: int, key: Secret, passphrase: Secret, kdf: Kdf,
               af_hash: str, keep_slot: bool) -> int:
        """Move ``old``'s key to the first free slot under ``passphrase``; with
        ``keep_slot``, on to ``old`` again.  Returns the slot it ends in."""
        new = self.check_new(None)
        h = self.loaded.header
        sealed = _seal(key, passphrase, kdf, h.cipher, h.key_bytes, luks1.STRIPES, h.hash)
        self._enable(f, new, sealed, kdf.iterations, kdf.salt)
        self.remove(f, old)
        if not keep_slot:
            return new
        self._enable(f, old, sealed, kdf.iterations, kdf.salt)
        self.remove(f, new)
        return old

    def remove(self, f: WritableHeader, slot: int) -> None:
        h = self.loaded.header
        ks = h.keyslots[slot]
        self._write(f, slot, replace(ks, active=False, iterations=0,
                                     salt=bytes(luks1.SALT_SIZE)))
        f.wipe(ks.material_offset * 512, padded(h.key_bytes * ks.stripes))

    def _enable(self, f: WritableHeader, slot: int, sealed: bytes, iterations: int,
                salt: bytes) -> None:
        ks = self.loaded.header.keyslots[slot]     # every slot's area validated on reading
        f.write(ks.material_offset * 512, sealed)
        self._write(f, slot, replace(ks, active=True, iterations=iterations, salt=salt,
                                     stripes=luks1.STRIPES))

    def _write(self, f: WritableHeader, slot: int, ks: luks1.Keyslot) -> None:
        h = self.loaded.header
        h = replace(h, keyslots=h.keyslots[:slot] + (ks,) + h.keyslots[slot + 1:])
        write_luks1(f, h)
        self.loaded.header = h


class Luks2Slots(Slots):
    MAX = 32                    # cryptsetup's LUKS2_KEYSLOTS_MAX

    def __init__(self, loaded: Loaded):
        super().__init__(loaded)
        self.writer: Luks2Writer | None = None

    def _begin(self, f: WritableHeader) -> dict:
        """The metadata to change (the stale copy, if any, is repaired first)."""
        if self.writer is None:
            self.writer = Luks2Writer(f, self.loaded.header)
        return copy.deepcopy(self.loaded.header.metadata)

    def _commit(self, meta: dict) -> None:
        self.writer.commit(meta)
        self.loaded.header.metadata = meta

    def add(self, f: WritableHeader, slot: int, key: Secret, passphrase: Secret, kdf: Kdf,
            unlocked: int, af_hash: str) -> None:
        """``passphrase`` opens ``key`` from ``slot``, in the digest of ``unlocked``."""
        meta = self._begin(f)
        digest = self._digest_of(meta, unlocked)
        meta["keyslots"][str(slot)] = self._sealed_slot(f, meta, key, passphrase, kdf, af_hash)
        digest["keyslots"].append(str(slot))
        self._commit(meta)

    def change(self, f: WritableHeader, slot: int, key: Secret, passphrase: Secret, kdf: Kdf,
               af_hash: str, keep_slot: bool) -> int:
        """``slot`` opens with ``passphrase`` instead (LUKS2 always keeps the slot id)."""
        meta = self._begin(f)
        name = _named(meta["keyslots"], slot)
        old = meta["keyslots"][name]
        new = self._sealed_slot(f, meta, key, passphrase, kdf, af_hash)
        if "priority" in old:
            new["priority"] = old["priority"]
        meta["keyslots"][name] = new
        self._commit(meta)
        self._wipe(f, old)
        return slot

    def remove(self, f: WritableHeader, slot: int) -> None:
        meta = self._begin(f)
        old = meta["keyslots"].pop(_named(meta["keyslots"], slot))
        for group in ("digests", "tokens"):
            for item in meta.get(group, {}).values():
                if isinstance(item, dict) and isinstance(item.get("keyslots"), list):
                    item["keyslots"] = [k for k in item["keyslots"] if not _names(k, slot)]
        self._commit(meta)
        self._wipe(f, old)

    def _digest_of(self, meta: dict, slot: int) -> dict:
        sid = self.loaded.header.segment_id
        for digest in meta["digests"].values():
            if any(_names(k, slot) for k in digest.get("keyslots", [])) and \
                    any(_names(k, sid) for k in digest.get("segments", [])):
                return digest
        raise FormatError(f"LUKS2 key slot {slot} has no digest of the data segment")

    def _sealed_slot(self, f: WritableHeader, meta: dict, key: Secret, passphrase: Secret,
                     kdf: Kdf, af_hash: str) -> dict:
        """Write the key material to a free area; the key slot object that describes it."""
        cipher = self.loaded.header.segment.encryption
        offset, size = self._free_area(meta, len(key))
        f.write(offset, _seal(key, passphrase, kdf, cipher, len(key), luks2.STRIPES, af_hash))
        return {"type": "luks2", "key_size": len(key),
                "af": {"type": "luks1", "stripes": luks2.STRIPES, "hash": af_hash},
                "area": {"type": "raw", "offset": str(offset), "size": str(size),
                         "encryption": cipher, "key_size": len(key)},
                "kdf": kdf_json(kdf)}

    def _free_area(self, meta: dict, key_bytes: int) -> tuple[int, int]:
        """The first gap that holds a key slot area (cryptsetup's LUKS2_find_area_gap)."""
        h = self.loaded.header
        size = -(-key_bytes * luks2.STRIPES // luks2.AREA_ALIGN) * luks2.AREA_ALIGN
        used = sorted(_area(ks) for ks in meta["keyslots"].values())
        offset = 2 * h.hdr_size
        for start, length in used:
            if offset + size <= start:
                break
            offset = max(offset, start + length)
        if offset + size > luks2_validate.hdr_and_areas_size(meta):
            raise CryptfsError("no free space in the LUKS2 key slot area; remove a key slot "
                               "first (luksKillSlot)")
        return offset, size

    def _wipe(self, f: WritableHeader, keyslot: dict) -> None:
        offset, length = _area(keyslot)
        if length:
            f.wipe(offset, length)


def _names(key, number: int) -> bool:
    """Whether a JSON id (a numbered string) names ``number``, read as cryptsetup reads it."""
    return isinstance(key, str) and luks2_validate.numbered(key) and \
        luks2_validate.atoi(key) == number


def _named(section: dict, number: int) -> str:
    """The key of ``section`` that names ``number``."""
    return next(k for k in section if _names(k, number))


def _area(keyslot: dict) -> tuple[int, int]:
    """(offset, size) of a key slot's area in the raw metadata; FormatError if it has none
    that reads (a slot of a type cryptfs does not use, with a broken area)."""
    try:
        area = keyslot["area"]
        return int(area["offset"]), int(area["size"])
    except (KeyError, TypeError, ValueError):
        raise FormatError("a LUKS2 key slot has no readable area; cryptfs will not guess "
                          "where free space is") from None


def kdf_json(kdf: Kdf) -> dict:
    """A key slot's ``kdf`` object as cryptsetup writes it."""
    if kdf.kind == "pbkdf2":
        out = {"type": "pbkdf2", "hash": kdf.hash, "iterations": kdf.iterations}
    else:
        out = {"type": kdf.kind, "time": kdf.iterations, "memory": kdf.memory,
               "cpus": kdf.parallel}
    out["salt"] = base64.b64encode(kdf.salt).decode()
    return out
