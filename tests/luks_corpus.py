"""Hostile LUKS headers made from valid ones: each case takes a header cryptsetup luksFormat
wrote and breaks one rule of cryptsetup's (or bends one it allows), recomputing the checksums so
that only that rule decides.  A case edits the header bytes in place, or returns new (shorter)
bytes.  Used by test_luks_corpus.py, test_luks_errors.py and test_luks_dump.py."""

import hashlib
import json
import struct

SECONDARY = "secondary"


# --- editing headers ---------------------------------------------------------------------

def hdr_size(area, offset: int = 0) -> int:
    return int.from_bytes(area[offset + 8:offset + 16], "big")


def copies(area) -> tuple[int, int]:
    return 0, hdr_size(area)


def resign(area: bytearray, offset: int, alg: str = "") -> None:
    """Recompute one LUKS2 copy's checksum (by default with the algorithm it names)."""
    size = hdr_size(area, offset)
    alg = alg or bytes(area[offset + 72:offset + 104]).split(b"\0")[0].decode()
    copy = bytearray(area[offset:offset + size])
    copy[448:512] = bytes(64)
    digest = hashlib.new(alg, copy).digest()
    area[offset + 448:offset + 512] = digest + bytes(64 - len(digest))


def json_of(area, offset: int = 0) -> dict:
    size = hdr_size(area, offset)
    return json.loads(bytes(area[offset + 4096:offset + size]).split(b"\0", 1)[0])


def set_text(area: bytearray, text: bytes, which=None) -> None:
    """Put ``text`` (NUL-padded) into the JSON area of the given copies (default: both)."""
    for offset in which if which is not None else copies(area):
        size = hdr_size(area, offset)
        if len(text) > size - 4096:
            raise ValueError("the JSON no longer fits the area")
        area[offset + 4096:offset + size] = text + bytes(size - 4096 - len(text))
        resign(area, offset)


def edit_json(area: bytearray, change, which=None) -> None:
    """Apply ``change(metadata)`` to the JSON of the given copies (default: both)."""
    for offset in which if which is not None else copies(area):
        meta = json_of(area, offset)
        change(meta)
        set_text(area, json.dumps(meta).encode(), [offset])


def set_binary(area: bytearray, fmt: str, at: int, value, which=None) -> None:
    """Overwrite a binary header field (struct format, offset in the copy), then re-sign."""
    for offset in which if which is not None else copies(area):
        struct.pack_into(fmt, area, offset + at, value)
        resign(area, offset)


def compact(area) -> bytes:
    return json.dumps(json_of(area), separators=(",", ":")).encode()


# --- LUKS2 cases: (name, mutate(area)) -----------------------------------------------------

def _meta(change):
    return lambda area: edit_json(area, change)


def _text(make):
    return lambda area: set_text(area, make(compact(area)))


def _set(path: str, value):
    """Set (or, with value DELETE, remove) metadata at a dotted path."""
    *parents, last = path.split(".")

    def change(meta):
        node = meta
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return _meta(change)


DELETE = object()


def _nested(depth: int):
    return _text(lambda t: t[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}")


def _fill_area(area):
    text = compact(area)
    room = hdr_size(area) - 4096 - len(text) - len(b',"pad":""')
    set_text(area, text[:-1] + b',"pad":"' + b"a" * room + b'"}')


def _second_slot(offset_delta: int, bind: bool = True):
    def change(meta):
        slot = json.loads(json.dumps(meta["keyslots"]["0"]))
        slot["area"]["offset"] = str(int(slot["area"]["offset"]) + offset_delta)
        meta["keyslots"]["1"] = slot
        if bind:
            meta["digests"]["0"]["keyslots"].append("1")
    return _meta(change)


def _second_digest(meta):
    meta["digests"]["1"] = dict(meta["digests"]["0"], keyslots=["0"])


def _two_segments(second_offset: int, first_size, second_size="dynamic"):
    def change(meta):
        first = meta["segments"]["0"]
        first["size"] = first_size
        meta["segments"]["1"] = dict(first, offset=str(int(first["offset"]) + second_offset),
                                     size=second_size)
        meta["digests"]["0"]["segments"].append("1")
    return _meta(change)


def _secondary_newer(area):
    _, second = copies(area)
    set_binary(area, ">Q", 16, 99, [second])
    edit_json(area, lambda m: m["config"].update(flags=["allow-discards"]), [second])


def _keyslots_size_to(data_offset_delta: int):
    def change(meta):
        data = int(meta["segments"]["0"]["offset"])
        meta["config"]["keyslots_size"] = str(data - 2 * (int(meta["config"]["json_size"]) + 4096)
                                              + data_offset_delta)
    return _meta(change)


LUKS2_CASES = [
    ("valid", lambda area: None),
    # the binary header
    ("bad-checksum", lambda area: [area.__setitem__(o + 4096 + 3, 0x20) for o in copies(area)]),
    ("version-3", lambda area: set_binary(area, ">H", 6, 3)),
    ("checksum-sha512", lambda area: [area.__setitem__(slice(o + 72, o + 104),
                                                       b"sha512".ljust(32, b"\0")) or
                                      resign(area, o) for o in copies(area)]),
    ("checksum-unknown-alg", lambda area: [area.__setitem__(slice(o + 72, o + 104),
                                                            b"nohash".ljust(32, b"\0"))
                                           for o in copies(area)]),
    ("checksum-tail-ignored", lambda area: [area.__setitem__(o + 500, 0x55)
                                            for o in copies(area)]),
    ("secondary-wrong-offset", lambda area: set_binary(area, ">Q", 256, 4096,
                                                       [copies(area)[1]])),
    ("secondary-newer-seqid", _secondary_newer),
    ("label-not-terminated", lambda area: [area.__setitem__(slice(o + 24, o + 72), b"L" * 48)
                                           or resign(area, o) for o in copies(area)]),
    # the JSON area
    ("json-leading-blank", _text(lambda t: b" " + t)),
    ("json-trailing-blanks", _text(lambda t: t + b" \n\t")),
    ("json-garbage-after-nul", _text(lambda t: t + b"\0x")),
    ("json-nul-inside", _text(lambda t: t[:-1] + b',"x":"a\0b"}')),
    ("json-no-terminator", _fill_area),
    ("json-not-object", _text(lambda t: b"[" + t + b"]")),
    ("json-comment", _text(lambda t: t[:-1] + b"/* c */}")),
    ("json-single-quotes-trailing-comma", _text(lambda t: t[:-1] + b",'x':1,}")),
    ("json-depth-32", _nested(31)),
    ("json-depth-33", _nested(32)),
    ("json-invalid", _text(lambda t: t[:-1])),
    # config
    ("config-missing", _set("config", DELETE)),
    ("config-json-size-int", _set("config.json_size", 12288)),
    ("config-json-size-mismatch", lambda area: edit_json(area, lambda m: m["config"].update(
        json_size=str(int(m["config"]["json_size"]) + 16384)))),
    ("config-json-size-blank-plus", lambda area: edit_json(area, lambda m: m["config"].update(
        json_size=" +" + m["config"]["json_size"]))),
    ("config-json-size-empty", _set("config.json_size", "")),
    ("config-keyslots-size-unaligned", lambda area: edit_json(area, lambda m: m["config"].update(
        keyslots_size=str(int(m["config"]["keyslots_size"]) - 512)))),
    ("config-keyslots-size-over-128M", _set("config.keyslots_size", str(129 << 20))),
    ("config-keyslots-size-reaches-data", _keyslots_size_to(4096)),
    ("config-keyslots-size-exactly-to-data", _keyslots_size_to(0)),
    ("config-flags-not-strings", _set("config.flags", ["allow-discards", 1])),
    ("config-flags-unknown", _set("config.flags", ["no-such-flag"])),
    ("config-requirements-not-object", _set("config.requirements", ["x"])),
    ("config-requirements-unknown", _set("config.requirements", {"mandatory": ["future"]})),
    ("config-requirements-two-reencrypt", _set("config.requirements", {
        "mandatory": ["online-reencrypt-v2", "online-reencrypt-v3"]})),
    ("config-requirements-reencrypt-no-slot", _set("config.requirements", {
        "mandatory": ["online-reencrypt-v2"]})),
    # keyslots
    ("keyslots-missing", _set("keyslots", DELETE)),
    ("keyslot-id-not-number", lambda area: edit_json(area, lambda m: m.update(
        keyslots={"x": m["keyslots"]["0"]}))),
    ("keyslot-type-missing", _set("keyslots.0.type", DELETE)),
    ("keyslot-type-empty", _set("keyslots.0.type", "")),
    ("keyslot-key-size-string", _set("keyslots.0.key_size", "64")),
    ("keyslot-key-size-double", _text(lambda t: t.replace(b'"key_size":64,"af"',
                                                         b'"key_size":64.0,"af"'))),
    ("keyslot-key-size-negative", _set("keyslots.0.key_size", -1)),
    ("keyslot-key-size-over-32-bit", _set("keyslots.0.key_size", 1 << 32)),
    ("keyslot-kdf-missing", _set("keyslots.0.kdf", DELETE)),
    ("keyslot-kdf-extra-field", _set("keyslots.0.kdf.time", 4)),
    ("keyslot-kdf-iterations-string", _set("keyslots.0.kdf.iterations", "1000")),
    ("keyslot-kdf-salt-empty", _set("keyslots.0.kdf.salt", "")),
    ("keyslot-kdf-salt-not-base64", _set("keyslots.0.kdf.salt", "!!")),
    ("keyslot-kdf-negative-iterations", _set("keyslots.0.kdf.iterations", -5)),
    ("keyslot-kdf-unknown-type", _set("keyslots.0.kdf.type", "scrypt")),
    ("keyslot-af-type", _set("keyslots.0.af.type", "luks2")),
    ("keyslot-af-stripes-string", _set("keyslots.0.af.stripes", "4000")),
    ("keyslot-af-stripes-odd", _set("keyslots.0.af.stripes", 3999)),
    ("keyslot-area-type", _set("keyslots.0.area.type", "other")),
    ("keyslot-area-encryption-missing", _set("keyslots.0.area.encryption", DELETE)),
    ("keyslot-area-key-size-string", _set("keyslots.0.area.key_size", "64")),
    ("keyslot-priority-odd", _set("keyslots.0.priority", 7)),
    ("keyslot-priority-string", _set("keyslots.0.priority", "2")),
    ("keyslot-unbound", _set("digests.0.keyslots", [])),
    ("keyslot-two-digests", _meta(_second_digest)),
    ("keyslot-unknown-type", _set("keyslots.0.type", "future-type")),
    ("keyslot-reencrypt-without-requirement", _meta(lambda m: m["keyslots"].update({"1": {
        "type": "reencrypt", "key_size": 1, "mode": "reencrypt", "direction": "forward",
        "area": {"type": "none", "offset": "1048576", "size": "4096"}}}))),
    # key slot areas
    ("area-offset-in-headers", lambda area: edit_json(area, lambda m: m["keyslots"]["0"][
        "area"].update(offset=str(int(m["config"]["json_size"]) + 4096)))),
    ("area-size-zero", _set("keyslots.0.area.size", "0")),
    ("area-beyond-keyslots", lambda area: edit_json(area, lambda m: m["keyslots"]["0"][
        "area"].update(offset=str(2 * (int(m["config"]["json_size"]) + 4096) +
                                  int(m["config"]["keyslots_size"]) - 4096)))),
    ("area-offset-hex", _set("keyslots.0.area.offset", "0x8000")),
    ("area-offset-blank", lambda area: edit_json(area, lambda m: m["keyslots"]["0"][
        "area"].update(offset=" " + m["keyslots"]["0"]["area"]["offset"]))),
    ("area-offset-overflow", _set("keyslots.0.area.offset", str(1 << 64))),
    ("area-offset-unaligned", lambda area: edit_json(area, lambda m: m["keyslots"]["0"][
        "area"].update(offset=str(int(m["keyslots"]["0"]["area"]["offset"]) + 512)))),
    ("areas-overlap", _second_slot(4096)),
    ("areas-adjacent", _second_slot(258048)),
    # segments
    ("segments-empty", _set("segments", {})),
    ("segment-id-not-number", lambda area: edit_json(area, lambda m: m.update(
        segments={"s": m["segments"]["0"]}, digests={"0": dict(m["digests"]["0"],
                                                               segments=["s"])}))),
    ("segment-offset-unaligned", lambda area: edit_json(area, lambda m: m["segments"]["0"]
                                                        .update(offset=str(int(
                                                            m["segments"]["0"]["offset"]) + 1)))),
    ("segment-offset-int", lambda area: edit_json(area, lambda m: m["segments"]["0"].update(
        offset=int(m["segments"]["0"]["offset"])))),
    ("segment-offset-in-keyslots-area", _set("segments.0.offset", str(1 << 20))),
    ("segment-offset-zero", _set("segments.0.offset", "0")),
    ("segment-size-zero", _set("segments.0.size", "0")),
    ("segment-size-unaligned", _set("segments.0.size", "1000")),
    ("segment-size-not-sector-multiple", _set("segments.0.size", "1536")),
    ("segment-size-fixed", _set("segments.0.size", "1048576")),
    ("segment-sector-size-zero", _set("segments.0.sector_size", 0)),
    ("segment-sector-size-1000", _set("segments.0.sector_size", 1000)),
    ("segment-sector-size-1536", _set("segments.0.sector_size", 1536)),
    ("segment-sector-size-string", _set("segments.0.sector_size", "4096")),
    ("segment-iv-tweak-negative", _set("segments.0.iv_tweak", "-1")),
    ("segment-iv-tweak-int", _set("segments.0.iv_tweak", 0)),
    ("segment-encryption-missing", _set("segments.0.encryption", DELETE)),
    ("segment-encryption-unknown", _set("segments.0.encryption", "des3_ede-xts-plain64")),
    ("segment-no-digest", _set("digests.0.segments", [])),
    ("segment-integrity-incomplete", _set("segments.0.integrity", {"type": "hmac(sha256)"})),
    ("segment-integrity-complete", _set("segments.0.integrity", {
        "type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"})),
    ("segment-flags-not-strings", _set("segments.0.flags", [1])),
    ("segment-type-unknown", _set("segments.0.type", "linear")),
    ("segments-two-dynamic", _two_segments(1 << 20, "dynamic")),
    ("segments-overlap", _two_segments(1 << 20, str(2 << 20))),
    ("segments-valid-pair", _two_segments(1 << 20, str(1 << 20))),
    ("segments-gap", lambda area: edit_json(area, lambda m: m["segments"].update(
        {"2": m["segments"].pop("0")}) or m["digests"]["0"].update(segments=["2"]))),
    ("segment-backup-only", _set("segments.0.flags", ["backup-final"])),
    # digests
    ("digests-missing", _set("digests", DELETE)),
    ("digest-id-not-number", lambda area: edit_json(area, lambda m: m.update(
        digests={"d": m["digests"]["0"]}))),
    ("digest-type-missing", _set("digests.0.type", DELETE)),
    ("digest-missing-keyslot", _set("digests.0.keyslots", ["0", "5"])),
    ("digest-missing-segment", _set("digests.0.segments", ["0", "3"])),
    ("digest-keyslots-not-array", _set("digests.0.keyslots", "0")),
    ("digest-keyslot-int", _set("digests.0.keyslots", [0])),
    ("digest-hash-missing", _set("digests.0.hash", DELETE)),
    ("digest-iterations-string", _set("digests.0.iterations", "1000")),
    ("digest-unknown-type", _set("digests.0.type", "future-digest")),
    # tokens
    ("tokens-missing", _set("tokens", DELETE)),
    ("token-id-not-number", _set("tokens", {"t": {"type": "x", "keyslots": []}})),
    ("token-type-missing", _set("tokens", {"0": {"keyslots": []}})),
    ("token-keyslots-missing", _set("tokens", {"0": {"type": "x"}})),
    ("token-unknown-keyslot", _set("tokens", {"0": {"type": "x", "keyslots": ["9"]}})),
    ("token-keyring", _set("tokens", {"0": {"type": "luks2-keyring", "keyslots": ["0"],
                                            "key_description": "k"}})),
    ("token-keyring-without-description", _set("tokens", {"0": {"type": "luks2-keyring",
                                                                "keyslots": []}})),
    ("token-custom", _set("tokens", {"3": {"type": "my-token", "keyslots": ["0"],
                                           "data": {"a": [1, 2.5, None]}}})),
    # one copy damaged: the other is used (blkid finds nothing else on the file)
    ("primary-damaged", lambda area: area.__setitem__(4096 + 3, 0x20)),
    ("secondary-damaged-json", lambda area: edit_json(area, lambda m: m.pop("tokens"),
                                                      [copies(area)[1]])),
]

#: cases applied to every metadata size (the rest run on the smallest and the largest)
EVERY_SIZE = {"valid", "config-json-size-mismatch", "json-no-terminator", "areas-overlap",
              "config-keyslots-size-reaches-data", "primary-damaged"}


# --- LUKS1 cases ---------------------------------------------------------------------------

def _slot(i: int) -> int:
    return 208 + 48 * i


def _put(fmt: str, at: int, value):
    return lambda area: struct.pack_into(fmt, area, at, value)


def _field(at: int, size: int, value: bytes):
    return lambda area: area.__setitem__(slice(at, at + size), value.ljust(size, b"\0"))


def _material_offset(slot: int, delta_from: int | None = None, value: int | None = None):
    def change(area):
        base = struct.unpack_from(">I", area, _slot(delta_from) + 40)[0] if delta_from is not \
            None else 0
        struct.pack_into(">I", area, _slot(slot) + 40, base + (value or 0))
    return change


def _swap_slots(area):
    one, two = (struct.unpack_from(">I", area, _slot(i) + 40)[0] for i in (1, 2))
    struct.pack_into(">I", area, _slot(1) + 40, two)
    struct.pack_into(">I", area, _slot(2) + 40, one)


LUKS1_CASES = [
    ("valid", lambda area: None),
    ("magic", _field(0, 6, b"LUKS\xba\xbf")),
    ("version-2", _put(">H", 6, 2)),
    ("version-3", _put(">H", 6, 3)),
    ("hash-md5", _field(72, 32, b"md5")),
    ("hash-unknown", _field(72, 32, b"nohash")),
    ("hash-sha1", _field(72, 32, b"sha1")),
    ("hash-upper-case", _field(72, 32, b"SHA256")),
    ("cipher-non-ascii", _field(8, 32, b"a\xe9s")),
    ("cipher-unterminated", _field(8, 32, b"x" * 32)),
    ("uuid-garbage", _field(168, 40, b"\xff" * 40)),
    ("payload-zero", _put(">I", 104, 0)),
    ("payload-one", _put(">I", 104, 1)),
    ("payload-inside-last-slot", lambda area: struct.pack_into(
        ">I", area, 104, struct.unpack_from(">I", area, _slot(7) + 40)[0] + 8)),
    ("key-bytes-zero", _put(">I", 108, 0)),
    ("key-bytes-odd", _put(">I", 108, 33)),
    ("key-bytes-huge", _put(">I", 108, 1 << 20)),
    ("mk-iterations-zero", _put(">I", 164, 0)),
    ("slot-state-garbage", _put(">I", _slot(3), 0x12345678)),
    ("slot-iterations-zero", _put(">I", _slot(0) + 4, 0)),
    ("stripes-inactive-slot", _put(">I", _slot(5) + 44, 3999)),
    ("stripes-active-slot", _put(">I", _slot(0) + 44, 4001)),
    ("material-in-header", _put(">I", _slot(0) + 40, 1)),
    ("material-wraps-32-bit", _put(">I", _slot(2) + 40, 1 << 23)),
    ("material-past-payload", _material_offset(6, delta_from=7, value=1 << 12)),
    ("slots-overlap", _material_offset(4, delta_from=3, value=8)),
    ("slots-swapped", _swap_slots),
    ("file-ends-in-last-slot", lambda area: area[:(struct.unpack_from(">I", area, _slot(7) + 40)[0]
                                                   + 8) * 512]),
]
