"""LUKS2 metadata validated as cryptsetup 2.6 validates it (lib/luks2/luks2_json_metadata.c
``LUKS2_hdr_validate``, the key slot handlers' ``validate``): one validator per section, run in
cryptsetup's order, each refusing with a :class:`FormatError` that names the field and the rule.

Numbers follow cryptsetup's C: a "numbered" string is ASCII digits only; 64-bit values stored as
strings are read with ``strtoull`` (leading blanks and a sign allowed, no overflow); 32-bit
values are JSON integers from 0 to 2^32 - 1.
"""

import base64
import re

from cryptfs.errors import FormatError
from cryptfs.formats.luks2.disk import BINARY_SIZE, HDR_SIZES
from cryptfs.formats.luks2.jsonc import Double, get_int, get_string

U64 = (1 << 64) - 1
MAX_KEYSLOTS_SIZE = 128 << 20
KDF_FIELDS = {"pbkdf2": {"hash": str, "iterations": int, "salt": str},
              "argon2i": {"time": int, "memory": int, "cpus": int, "salt": str},
              "argon2id": {"time": int, "memory": int, "cpus": int, "salt": str}}
ONLINE_REENCRYPT = ("online-reencrypt", "online-reencrypt-v2", "online-reencrypt-v3")

_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer"}


def refuse(where: str, rule: str):
    """FormatError naming the field (escaped: ids are arbitrary text) and the rule."""
    where = "".join(c if c.isprintable() else repr(c)[1:-1] for c in where)
    raise FormatError(f"LUKS2 metadata {where}: {rule}")


# --- C's view of JSON values -------------------------------------------------------------

def is_a(value, kind: type) -> bool:
    """json-c's type test: bool is not an integer, a double is not an integer."""
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, Double)
    return isinstance(value, kind)


def numbered(text: str) -> bool:
    """cryptsetup's numbered(): only ASCII digits (the empty string passes, as in C)."""
    return all("0" <= c <= "9" for c in text)


def strtoull(text: str) -> int | None:
    """glibc's strtoull(text, &end, 10) with cryptsetup's checks: None unless all of ``text``
    is consumed without overflow; a '-' negates modulo 2^64; the empty string is 0."""
    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)", text)
    if not text:
        return 0
    if not m or int(m[2]) > U64:
        return None
    return (-int(m[2])) % (1 << 64) if m[1] == "-" else int(m[2])


def uint64(value) -> int:
    """``crypt_jobj_get_uint64``: strtoull of the value's text, 0 where that fails."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    if isinstance(value, bool):
        text = str(value).lower()
    return strtoull(text) or 0


def b64decode(text) -> bytes | None:
    """cryptsetup's base64 decoding: blanks skipped, padding required, canonical; None if it
    is not base64."""
    if not isinstance(text, str):
        return None
    text = re.sub("[ \t\n\r]", "", text)
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return data if base64.b64encode(data).decode() == text else None


def atoi(key: str) -> int:
    """C's atoi() of a numbered key (glibc: strtol, then truncated to int)."""
    value = min(int(key), (1 << 63) - 1) if key else 0
    return (value + (1 << 31)) % (1 << 32) - (1 << 31)


def need(obj, key: str, kind: type, where: str, nonempty: bool = True):
    """``json_contains``: ``obj[key]`` of JSON type ``kind``; strings must not be empty."""
    path = f"{where}.{key}" if where else key
    if not isinstance(obj, dict) or key not in obj:
        refuse(path, "is missing")
    value = obj[key]
    if not is_a(value, kind):
        refuse(path, f"must be {_TYPES[kind]}")
    if kind is str and nonempty and not value:
        refuse(path, "must not be empty")
    return value


def need_uint32(obj, key: str, where: str) -> int:
    value = need(obj, key, int, where)
    if not 0 <= value <= 0xFFFFFFFF:
        refuse(f"{where}.{key}", f"{value} is not a 32-bit unsigned integer")
    return value


def need_number_string(obj, key: str, where: str) -> int:
    """A numbered string holding a uint64, as segment and area offsets and sizes are."""
    text = need(obj, key, str, where)
    value = strtoull(text) if numbered(text) else None
    if value is None:
        refuse(f"{where}.{key}", f"{text!r} is not a decimal string of a 64-bit number")
    return value


def _numbered_keys(section: dict, name: str) -> None:
    for key in section:
        if not numbered(key):
            refuse(f"{name}.{key}", "the id is not a decimal number")


def _ids(array: list, section: dict, where: str, name: str) -> None:
    """Each element names an existing object of ``section``."""
    for i, ref in enumerate(array):
        if not isinstance(ref, str):
            refuse(f"{where}[{i}]", "must be a string")
        if not isinstance(section, dict) or not isinstance(section.get(ref), dict):
            refuse(f"{where}[{i}]", f"names {name} {ref!r}, which does not exist")


def _strings(array: list, where: str) -> None:
    for i, item in enumerate(array):
        if not isinstance(item, str):
            refuse(f"{where}[{i}]", "must be a string")


# --- the sections, in cryptsetup's order -------------------------------------------------

def requirements(meta: dict) -> None:
    config = need(meta, "config", dict, "")
    if "requirements" not in config:
        return
    reqs = need(config, "requirements", dict, "config")
    if "mandatory" not in reqs:
        return
    mandatory = need(reqs, "mandatory", list, "config.requirements")
    _strings(mandatory, "config.requirements.mandatory")
    if sum(map(_reencrypt_flag, mandatory)) > 1:
        refuse("config.requirements.mandatory", "holds more than one online-reencrypt flag")


def _reencrypt_flag(flag: str) -> bool:
    return flag == "online-reencrypt" or bool(re.fullmatch(r"online-reencrypt-v[0-9]+", flag))


def mandatory(meta: dict) -> list[str]:
    reqs = meta["config"].get("requirements", {})
    return reqs.get("mandatory", [])


def tokens(meta: dict) -> None:
    section = need(meta, "tokens", dict, "")
    if "keyslots" not in meta:
        refuse("keyslots", "is missing")
    _numbered_keys(section, "tokens")
    for key, token in section.items():
        where = f"tokens.{key}"
        need(token, "type", str, where)
        _ids(need(token, "keyslots", list, where), meta["keyslots"], f"{where}.keyslots",
             "key slot")


def digests(meta: dict) -> None:
    section = need(meta, "digests", dict, "")
    keyslots, segments = need(meta, "keyslots", dict, ""), need(meta, "segments", dict, "")
    _numbered_keys(section, "digests")
    for key, digest in section.items():
        where = f"digests.{key}"
        need(digest, "type", str, where)
        slots = need(digest, "keyslots", list, where)
        segs = need(digest, "segments", list, where)
        _ids(slots, keyslots, f"{where}.keyslots", "key slot")
        _ids(segs, segments, f"{where}.segments", "segment")


def is_backup(segment: dict) -> bool:
    return any(isinstance(f, str) and f.startswith("backup-") for f in segment.get("flags", []))


def segments(meta: dict) -> None:
    section = need(meta, "segments", dict, "")
    if not section:
        refuse("segments", "is empty")
    first_backup = None
    for key, seg in section.items():
        where = f"segments.{key}"
        if not numbered(key):
            refuse(where, "the id is not a decimal number")
        kind = need(seg, "type", str, where)
        offset = need_number_string(seg, "offset", where)
        size_text = need(seg, "size", str, where)
        size = 0
        if size_text != "dynamic":
            size = need_number_string(seg, "size", where)
            if not size:
                refuse(f"{where}.size", "must not be 0 (use \"dynamic\")")
        if offset % 512 or size % 512:
            refuse(where, f"offset {offset} and size {size} must be multiples of 512")
        if "flags" in seg:
            _strings(need(seg, "flags", list, where), f"{where}.flags")
        number = atoi(key)
        if is_backup(seg):
            first_backup = number if first_backup is None else min(first_backup, number)
        elif first_backup is not None and number >= first_backup:
            refuse(where, f"a regular segment follows backup segment {first_backup}")
        if kind == "crypt":
            _crypt_segment(seg, key, size, meta["digests"], where)
    count = len(section)
    if first_backup == 0:
        refuse("segments", "holds no regular segment")
    if first_backup is not None and first_backup >= count:
        refuse("segments", f"a gap before backup segment {first_backup}")
    regular = count if first_backup is None else first_backup
    for i in range(count):
        if str(i) not in section:
            refuse("segments", f"a gap at id {i} (ids must run from 0)")
    _segment_intervals([section[str(i)] for i in range(regular)])
    _reencrypt_segments(meta, section, regular)


def _crypt_segment(seg: dict, key: str, size: int, digests_: dict, where: str) -> None:
    tweak = need(seg, "iv_tweak", str, where)
    need(seg, "encryption", str, where)
    need(seg, "sector_size", int, where)
    if "integrity" in seg:
        integrity = need(seg, "integrity", dict, where)
        for field in ("type", "journal_encryption", "journal_integrity"):
            need(integrity, field, str, f"{where}.integrity")
    sector = need_uint32(seg, "sector_size", where)
    if not sector or sector % 512:
        refuse(f"{where}.sector_size", f"{sector} is not a positive multiple of 512")
    if not numbered(tweak) or strtoull(tweak) is None:
        refuse(f"{where}.iv_tweak", f"{tweak!r} is not a decimal string of a 64-bit number")
    if size % sector:
        refuse(f"{where}.size", f"{size} is not a multiple of the sector size {sector}")
    if not any(key in d.get("segments", []) for d in digests_.values()):
        refuse(where, "no digest is assigned to this crypt segment")


def _segment_intervals(regular: list[dict]) -> None:
    spans = [(uint64(s["offset"]), uint64(s["size"]) or U64) for s in regular]
    for i, (offset, length) in enumerate(spans):
        if length == U64 and i != len(spans) - 1:
            refuse(f"segments.{i}", "only the last regular segment may have size \"dynamic\"")
        for j, (other, other_len) in enumerate(spans):
            if i == j:
                continue
            if other_len != U64 and other > U64 - other_len:
                refuse(f"segments.{j}", "offset + size overflows 64 bits")
            if other <= offset and (other_len == U64 or offset < other + other_len):
                refuse(f"segments.{i}", f"overlaps segments.{j}")


def _reencrypt_segments(meta: dict, section: dict, regular: int) -> None:
    if not set(mandatory(meta)) & set(ONLINE_REENCRYPT):
        return
    final = previous = None
    for i in range(regular, len(section)):
        if "backup-final" in section[str(i)].get("flags", []):
            final = section[str(i)]
        elif "backup-previous" in section[str(i)].get("flags", []):
            previous = section[str(i)]
    if final is None or previous is None:
        refuse("segments", "an online reencryption needs backup-final and backup-previous "
                           "segments")
    for i in range(regular):
        seg = section[str(i)]
        matches = [_same_segment(seg, final)]
        if "in-reencryption" not in seg.get("flags", []):
            matches.append(_same_segment(seg, previous))
        if not any(matches):
            refuse(f"segments.{i}", "matches neither backup segment")


def _same_segment(a: dict, b: dict) -> bool:
    """``json_segment_cmp``: same type; crypt segments: same sector size and cipher."""
    if not isinstance(a.get("type"), str) or not isinstance(b.get("type"), str):
        return False
    if a["type"] != b["type"]:
        return False
    if a["type"] != "crypt":
        return True
    return _sector_size(a) == _sector_size(b) and \
        get_string(a.get("encryption", "null")) == get_string(b.get("encryption", "null"))


def _sector_size(segment: dict) -> int:
    """``json_segment_get_sector_size``: 512 when missing or negative."""
    size = get_int(segment["sector_size"]) if "sector_size" in segment else 512
    return 512 if size < 0 else size


def keyslots(meta: dict) -> None:
    section = need(meta, "keyslots", dict, "")
    for key, slot in section.items():
        where = f"keyslots.{key}"
        if not numbered(key):
            refuse(where, "the id is not a decimal number")
        need(slot, "type", str, where)
        need_uint32(slot, "key_size", where)


def config(meta: dict) -> None:
    section = need(meta, "config", dict, "")
    json_size = need(section, "json_size", str, "config")
    keyslots_size = need(section, "keyslots_size", str, "config")
    if strtoull(json_size) is None:
        refuse("config.json_size", f"{json_size!r} is not a 64-bit number")
    if strtoull(keyslots_size) is None:
        refuse("config.keyslots_size", f"{keyslots_size!r} is not a 64-bit number")
    metadata = metadata_size(meta)
    if metadata not in HDR_SIZES:
        refuse("config.json_size", f"gives a header size of {metadata} bytes (allowed: 16 KiB, "
                                   "32 KiB ... 4 MiB)")
    size = strtoull(keyslots_size)
    if size % 4096 or size > MAX_KEYSLOTS_SIZE:
        refuse("config.keyslots_size", f"{size} is not a multiple of 4096 up to 128 MiB")
    data = min_segment_offset(meta["segments"])
    if data and (data < size or data - size < 2 * metadata):
        refuse("config.keyslots_size", f"the key slots area ({size} bytes after both "
                                       f"{metadata}-byte headers) overlaps the data at {data}")
    if "flags" in section:
        _strings(need(section, "flags", list, "config"), "config.flags")


def metadata_size(meta: dict) -> int:
    """One header copy's size: config.json_size + the 4096-byte binary header (mod 2^64)."""
    return (uint64(meta["config"]["json_size"]) + BINARY_SIZE) & U64


def min_segment_offset(section: dict) -> int:
    """The lowest offset of a regular segment; 0 if any starts at 0 (a detached header)."""
    offsets = [uint64(s.get("offset")) for s in section.values() if not is_backup(s)]
    return 0 if 0 in offsets else min(offsets, default=U64)


def hdr_and_areas_size(meta: dict) -> int:
    """Both header copies and the key slots area: what the header device must hold."""
    return (2 * metadata_size(meta) + uint64(meta["config"]["keyslots_size"])) & U64


def areas(meta: dict) -> None:
    section = meta["keyslots"]
    spans = []
    for key, slot in section.items():
        where = f"keyslots.{key}"
        area = need(slot, "area", dict, where)
        need(area, "type", str, f"{where}.area")
        spans.append((f"{where}.area", need_number_string(area, "offset", f"{where}.area"),
                      need_number_string(area, "size", f"{where}.area")))
    start, end = 2 * metadata_size(meta) & U64, hdr_and_areas_size(meta)
    for where, offset, length in spans:
        if offset < start:
            refuse(where, f"offset {offset} is inside the two {start // 2}-byte headers")
        if not length:
            refuse(where, "size must not be 0")
        if offset > U64 - length:
            refuse(where, "offset + size overflows 64 bits")
        if offset + length > end:
            refuse(where, f"[{offset}, {offset + length}) ends beyond the key slots area "
                          f"(which ends at {end})")
        for other, o_offset, o_length in spans:
            if other != where and o_offset <= offset < o_offset + o_length:
                refuse(where, f"[{offset}, {offset + length}) overlaps {other} "
                              f"[{o_offset}, {o_offset + o_length})")


def json_size(meta: dict, area_size: int, compact_size: int) -> None:
    declared = uint64(meta["config"]["json_size"])
    if declared != area_size:
        refuse("config.json_size", f"{declared} does not match the {area_size}-byte JSON area "
                                   "of the binary header")
    if compact_size > area_size:
        refuse("config", f"the JSON ({compact_size} bytes) does not fit the {area_size}-byte "
                         "JSON area")


def keyslot_types(meta: dict) -> None:
    """The key slot handlers' own validation: ``luks2`` and ``reencrypt`` slots."""
    reencrypts = 0
    for key, slot in meta["keyslots"].items():
        where = f"keyslots.{key}"
        if slot["type"] == "luks2":
            _luks2_keyslot(slot, where)
            name = str(atoi(key) % (1 << 32))
            bound = sum(name in d.get("keyslots", []) for d in meta["digests"].values())
            if bound != 1:
                refuse(where, f"is assigned to {bound} digests (must be exactly 1)")
        elif slot["type"] == "reencrypt":
            _reencrypt_keyslot(slot, where)
            reencrypts += 1
    flags = mandatory(meta)
    if set(flags) & set(ONLINE_REENCRYPT) and not reencrypts:
        refuse("keyslots", "an online reencryption requirement needs a reencrypt key slot")
    if reencrypts and not any(map(_reencrypt_flag, flags)):
        refuse("keyslots", "a reencrypt key slot needs an online-reencrypt requirement")
    if reencrypts > 1:
        refuse("keyslots", "holds more than one reencrypt key slot")


def _luks2_keyslot(slot: dict, where: str) -> None:
    kdf = need(slot, "kdf", dict, where)
    af = need(slot, "af", dict, where)
    area = need(slot, "area", dict, where)
    kind = need(kdf, "type", str, f"{where}.kdf")
    for field, field_kind in KDF_FIELDS.get(kind, {}).items():
        need(kdf, field, field_kind, f"{where}.kdf")
    if need(af, "type", str, f"{where}.af") != "luks1":
        refuse(f"{where}.af.type", f"{af['type']!r} is not supported (only luks1)")
    need(af, "hash", str, f"{where}.af")
    need(af, "stripes", int, f"{where}.af")
    if need(area, "type", str, f"{where}.area") != "raw":
        refuse(f"{where}.area.type", f"{area['type']!r} is not supported (only raw)")
    need(area, "encryption", str, f"{where}.area")
    need(area, "key_size", int, f"{where}.area")


def _reencrypt_keyslot(slot: dict, where: str) -> None:
    area = slot["area"]
    key_size = need(slot, "key_size", int, where)
    mode = need(slot, "mode", str, where)
    direction = need(slot, "direction", str, where)
    if key_size != 1:
        refuse(f"{where}.key_size", "must be 1 in a reencrypt key slot")
    if mode not in ("reencrypt", "encrypt", "decrypt"):
        refuse(f"{where}.mode", f"{mode!r} is not reencrypt, encrypt or decrypt")
    if direction not in ("forward", "backward"):
        refuse(f"{where}.direction", f"{direction!r} is not forward or backward")
    kind = area["type"]
    if kind in ("checksum", "datashift-checksum"):
        need(area, "hash", str, f"{where}.area")
        sector = need_uint32(area, "sector_size", f"{where}.area")
        if sector < 512 or sector & (sector - 1):
            refuse(f"{where}.area.sector_size", f"{sector} is not a power of 2 from 512")
    elif kind in ("datashift", "datashift-journal"):
        shift = uint64(need(area, "shift_size", str, f"{where}.area"))
        if not shift or shift % 512:
            refuse(f"{where}.area.shift_size", f"{shift} is not a positive multiple of 512")


#: cryptsetup's order (LUKS2_hdr_validate); json_size and the key slot types follow
SECTIONS = (requirements, tokens, digests, segments, keyslots, config, areas)


def validate(meta: dict, area_size: int, compact_size: int) -> None:
    """FormatError unless ``meta`` (from a JSON area of ``area_size`` bytes whose JSON json-c
    writes in ``compact_size``) is metadata cryptsetup accepts."""
    for check in SECTIONS:
        check(meta)
    json_size(meta, area_size, compact_size)
    keyslot_types(meta)
