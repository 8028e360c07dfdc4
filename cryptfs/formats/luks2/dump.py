"""``cryptsetup luksDump`` for LUKS2, line for line as cryptsetup 2.6 prints it
(``LUKS2_hdr_dump`` and the key slot, token and digest handlers' dumps), from the validated
metadata — values cryptsetup never checks are printed as its C code prints them."""

from cryptfs.formats.luks2.jsonc import get_int, get_int64, get_string
from cryptfs.formats.luks2.validate import U64, atoi, b64decode, is_backup, metadata_size, uint64

KEYSLOTS_MAX = TOKENS_MAX = SEGMENTS_MAX = 32
DIGESTS_MAX = 8
PRIORITIES = {0: "ignored", 1: "normal", 2: "preferred"}


def dump(header) -> str:
    """The whole dump, ending in a newline where cryptsetup's does."""
    meta = header.metadata
    out = ["LUKS header information\n",
           "Version:       \t2\n",
           f"Epoch:         \t{header.seqid}\n",
           f"Metadata area: \t{metadata_size(meta)} [bytes]\n",
           f"Keyslots area: \t{uint64(meta['config']['keyslots_size'])} [bytes]\n",
           f"UUID:          \t{header.uuid or '(no UUID)'}\n",
           f"Label:         \t{header.label or '(no label)'}\n",
           f"Subsystem:     \t{header.subsystem or '(no subsystem)'}\n"]
    for part in (_config, _segments, _keyslots, _tokens, _digests):
        out += part(meta)
    return "".join(out)


def _cstr(value) -> str:
    """printf("%s") of ``json_object_get_string``: glibc prints NULL as (null)."""
    text = get_string(value)
    return "(null)" if text is None else text


def _u32(value) -> int:
    """``crypt_jobj_get_uint32``."""
    return get_int64(value) & 0xFFFFFFFF


def _hex_base64(value, indent: str = "\t            ") -> str:
    """``hexprint_base64``: 16 bytes a line; nothing at all if the value is not base64."""
    data = b64decode(value if isinstance(value, str) else "")
    if data is None:
        return ""
    lines = [" ".join(f"{b:02x}" for b in data[i:i + 16]) + " " for i in range(0, len(data), 16)]
    return f"\n{indent}".join(lines) + "\n"


def _config(meta: dict) -> list[str]:
    config = meta["config"]
    flags = config.get("flags", [])
    reqs = config.get("requirements", {}).get("mandatory", [])
    out = ["Flags:       \t", *(f"{f} " for f in flags),
           "" if flags else "(no flags)", "\n", "" if reqs else "\n"]
    if reqs:
        out += ["Requirements:\t", *(f"{r} " for r in reqs), "\n\n"]
    return out


def _segments(meta: dict) -> list[str]:
    out = ["Data segments:\n"]
    for key, seg in _numbered(meta["segments"], SEGMENTS_MAX):
        out += [f"  {key}: {_cstr(seg['type'])}\n",
                f"\toffset: {uint64(seg['offset'])} [bytes]\n",
                "\tlength: (whole device)\n" if seg["size"] == "dynamic" else
                f"\tlength: {uint64(seg['size'])} [bytes]\n"]
        if "encryption" in seg:
            out.append(f"\tcipher: {_cstr(seg['encryption'])}\n")
        if "sector_size" in seg:
            out.append(f"\tsector: {_u32(seg['sector_size'])} [bytes]\n")
        integrity = seg.get("integrity")
        if isinstance(integrity, dict) and "type" in integrity:
            out.append(f"\tintegrity: {_cstr(integrity['type'])}\n")
        if seg.get("flags"):
            out.append(f"\tflags : {', '.join(seg['flags'])}\n")
        out.append("\n")
    return out


def _keyslots(meta: dict) -> list[str]:
    out = ["Keyslots:\n"]
    for key, slot in _numbered(meta["keyslots"], KEYSLOTS_MAX):
        unbound = "" if _bound(meta, key) else " (unbound)"
        out.append(f"  {key}: {slot['type']}{unbound}\n")
        if "key_size" in slot:
            out.append(f"\tKey:        {_u32(slot['key_size']) * 8 % (1 << 32)} bits\n")
        priority = get_int(slot["priority"]) if "priority" in slot else 1
        out.append(f"\tPriority:   {PRIORITIES.get(priority, 'invalid')}\n")
        if slot["type"] == "luks2":
            out += _luks2_keyslot(slot)
        elif slot["type"] == "reencrypt":
            out += _reencrypt_keyslot(slot)
        out += [f"\tDigest ID:  {did}\n" for did, d in meta["digests"].items()
                for ref in d["keyslots"] if ref == key]
    return out


def _bound(meta: dict, key: str) -> bool:
    """Whether the slot's digest (the first naming it) also serves a regular segment."""
    digest = next((did for did, d in meta["digests"].items() if key in d["keyslots"]), None)
    if digest is None:
        return False
    regular = sum(not is_backup(s) for s in meta["segments"].values())
    for segment in map(str, range(regular)):
        first = next((did for did, d in meta["digests"].items() if segment in d["segments"]),
                     None)
        if first is not None and atoi(first) == atoi(digest):
            return True
    return False


def _luks2_keyslot(slot: dict) -> list[str]:
    kdf, af, area = slot["kdf"], slot["af"], slot["area"]
    out = [f"\tCipher:     {area['encryption']}\n",
           f"\tCipher key: {_u32(area['key_size']) * 8 % (1 << 32)} bits\n",
           f"\tPBKDF:      {kdf['type']}\n"]
    if kdf["type"] == "pbkdf2":
        out += [f"\tHash:       {_cstr(kdf.get('hash'))}\n",
                f"\tIterations: {uint64(kdf.get('iterations'))}\n"]
    else:
        out += [f"\tTime cost:  {get_int64(kdf.get('time')) & U64}\n",
                f"\tMemory:     {get_int64(kdf.get('memory')) & U64}\n",
                f"\tThreads:    {get_int64(kdf.get('cpus')) & U64}\n"]
    out += [f"\tSalt:       {_hex_base64(kdf.get('salt'))}",
            f"\tAF stripes: {get_int(af['stripes']) % (1 << 32)}\n",
            f"\tAF hash:    {af['hash']}\n",
            f"\tArea offset:{uint64(area['offset'])} [bytes]\n",
            f"\tArea length:{uint64(area['size'])} [bytes]\n"]
    return out


def _reencrypt_keyslot(slot: dict) -> list[str]:
    area = slot["area"]
    out = [f"\t{'Mode:':<12}{slot['mode']}\n", f"\t{'Direction:':<12}{slot['direction']}\n",
           f"\t{'Resilience:':<12}{area['type']}\n"]
    if area["type"] == "checksum":
        out += [f"\t{'Hash:':<12}{_cstr(area.get('hash'))}\n",
                f"\t{'Hash data:':<12}{get_int(area.get('sector_size'))} [bytes]\n"]
    elif area["type"] == "datashift":
        out.append(f"\t{'Shift size:':<12}{uint64(area.get('shift_size'))}[bytes]\n")
    out += [f"\tArea offset:{uint64(area['offset'])} [bytes]\n",
            f"\tArea length:{uint64(area['size'])} [bytes]\n"]
    return out


def _tokens(meta: dict) -> list[str]:
    out = ["Tokens:\n"]
    for key, token in _numbered(meta["tokens"], TOKENS_MAX):
        out.append(f"  {key}: {token['type']}\n")
        if token["type"] == "luks2-keyring" and "key_description" in token:
            out.append(f"\tKey description: {_cstr(token['key_description'])}\n")
        out += [f"\tKeyslot:    {ref}\n" for ref in token["keyslots"]]
    return out


def _digests(meta: dict) -> list[str]:
    out = ["Digests:\n"]
    for key, digest in _numbered(meta["digests"], DIGESTS_MAX):
        out.append(f"  {key}: {digest['type']}\n")
        if digest["type"] == "pbkdf2":
            out += [f"\tHash:       {_cstr(digest.get('hash'))}\n",
                    f"\tIterations: {get_int64(digest.get('iterations')) & U64}\n",
                    f"\tSalt:       {_hex_base64(digest.get('salt'))}",
                    f"\tDigest:     {_hex_base64(digest.get('digest'))}"]
    return out


def _numbered(section: dict, limit: int):
    """(id, object) for ids 0 .. limit-1 as "%i" prints them, in that order."""
    return [(str(i), section[str(i)]) for i in range(limit) if str(i) in section]
