"""LUKS2 key slots and digests as JSON objects, both ways: the typed view cryptfs runs
(:class:`Keyslot` — or why a slot cannot run — and :class:`Digest`), and the objects of a new
slot or header as cryptsetup writes them; the KDF object is made and read only here
(:func:`kdf_json`, :func:`kdf_of`).  Also where a new slot's area goes in the key slots area.

Objects read here come from validated metadata (:mod:`.validate`).
"""

import base64
import os
from dataclasses import dataclass

from cryptfs.crypto import hashes
from cryptfs.crypto.keys import Secret
from cryptfs.errors import CryptfsError, FormatError
from cryptfs.formats.kdf import PBKDF2_MAX_ITERATIONS, Kdf, pbkdf2_digest
from cryptfs.formats.keyslot_area import header_spec, padded
from cryptfs.formats.luks2.jsonc import get_int
from cryptfs.formats.luks2.validate import (
    atoi,
    b64decode,
    hdr_and_areas_size,
    is_a,
    numbered,
    uint64,
)

STRIPES = 4000
AREA_ALIGN = 4096
DIGEST_SIZE = SALT_SIZE = 32


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
class Digest:
    keyslots: frozenset[int]
    segments: frozenset[int]
    hash: str
    iterations: int
    salt: bytes
    digest: bytes

    def matches(self, key: Secret) -> bool:
        return pbkdf2_digest(self.hash, key, self.salt, self.iterations,
                             len(self.digest)) == self.digest


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the KDF object ----------------------------------------------------------------------

def kdf_json(kdf: Kdf) -> dict:
    """A key slot's ``kdf`` object as cryptsetup writes it."""
    if kdf.kind == "pbkdf2":
        out = {"type": "pbkdf2", "hash": kdf.hash, "iterations": kdf.iterations}
    else:
        out = {"type": kdf.kind, "time": kdf.iterations, "memory": kdf.memory,
               "cpus": kdf.parallel}
    out["salt"] = _b64(kdf.salt)
    return out


def kdf_of(obj: dict, salt: bytes) -> Kdf | None:
    """The :class:`Kdf` a validated ``kdf`` object describes; None for a kind cryptfs lacks."""
    kind = obj["type"]
    if kind == "pbkdf2":
        return Kdf(kind, salt, obj["iterations"], obj["hash"])
    if kind in ("argon2i", "argon2id"):
        return Kdf(kind, salt, obj["time"], memory=obj["memory"], parallel=obj["cpus"])
    return None


# --- key slots ---------------------------------------------------------------------------

def area_size(key_bytes: int) -> int:
    """A new slot's area: the split key in whole 4 KiB."""
    return -(-padded(key_bytes * STRIPES) // AREA_ALIGN) * AREA_ALIGN


def keyslot_json(key_bytes: int, offset: int, size: int, cipher: str, af_hash: str,
                 kdf: Kdf) -> dict:
    """A new ``luks2`` key slot object, as cryptsetup writes it."""
    return {"type": "luks2", "key_size": key_bytes,
            "af": {"type": "luks1", "stripes": STRIPES, "hash": af_hash},
            "area": {"type": "raw", "offset": str(offset), "size": str(size),
                     "encryption": cipher, "key_size": key_bytes},
            "kdf": kdf_json(kdf)}


def keyslot_of(kid: int, ks: dict) -> tuple[Keyslot | None, str | None]:
    """A validated luks2 key slot as cryptfs runs it, or why it cannot run it."""
    af, area = ks["af"], ks["area"]
    salt = b64decode(ks["kdf"].get("salt"))
    if salt is None:
        return None, "its kdf salt is not base64"
    kdf = kdf_of(ks["kdf"], salt)
    if kdf is None:
        return None, f"key derivation {ks['kdf']['type']!r} is not supported"
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
    if not hashes.supported(slot.af_hash):
        return None, f"AF hash {slot.af_hash!r} is not supported"
    return slot, None


def area_of(keyslot: dict) -> tuple[int, int]:
    """(offset, size) of any key slot's area in the raw metadata; FormatError if it has none
    that reads (a slot of a type cryptfs does not use, with a broken area)."""
    try:
        area = keyslot["area"]
        return int(area["offset"]), int(area["size"])
    except (KeyError, TypeError, ValueError):
        raise FormatError("a LUKS2 key slot has no readable area; cryptfs will not guess "
                          "where free space is") from None


def free_area(meta: dict, start: int, key_bytes: int) -> tuple[int, int]:
    """(offset, size): the first gap from ``start`` (the end of both header copies) that holds
    a new slot's area (cryptsetup's LUKS2_find_area_gap); CryptfsError if none does."""
    size = area_size(key_bytes)
    offset = start
    for used, length in sorted(area_of(ks) for ks in meta["keyslots"].values()):
        if offset + size <= used:
            break
        offset = max(offset, used + length)
    if offset + size > hdr_and_areas_size(meta):
        raise CryptfsError("no free space in the LUKS2 key slot area; remove a key slot "
                           "first (luksKillSlot)")
    return offset, size


def names(key, number: int) -> bool:
    """Whether a JSON id (a numbered string) names ``number``, read as cryptsetup reads it."""
    return isinstance(key, str) and numbered(key) and atoi(key) == number


def named(section: dict, number: int) -> str:
    """The key of ``section`` that names ``number``."""
    return next(k for k in section if names(k, number))


# --- digests -----------------------------------------------------------------------------

def digest_json(key: Secret, hash_name: str, iterations: int, keyslots: list[str],
                segments: list[str]) -> dict:
    """A new pbkdf2 digest of ``key``, with a fresh salt."""
    salt = os.urandom(SALT_SIZE)
    return {"type": "pbkdf2", "keyslots": keyslots, "segments": segments, "hash": hash_name,
            "iterations": iterations, "salt": _b64(salt),
            "digest": _b64(pbkdf2_digest(hash_name, key, salt, iterations, DIGEST_SIZE))}


def digest_of(d: dict) -> Digest | None:
    """A pbkdf2 digest cryptfs can check keys against; None for anything else."""
    salt, value = b64decode(d.get("salt")), b64decode(d.get("digest"))
    hash_name, iterations = d.get("hash"), d.get("iterations")
    if d["type"] != "pbkdf2" or salt is None or not value or not isinstance(hash_name, str) \
            or not hashes.supported(hash_name) or not is_a(iterations, int) \
            or not 1 <= iterations <= PBKDF2_MAX_ITERATIONS:
        return None
    ids = [frozenset(int(i) for i in d[k] if i and numbered(i)) for k in ("keyslots", "segments")]
    return Digest(ids[0], ids[1], hash_name, iterations, salt, value)
