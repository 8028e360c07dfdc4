"""LUKS bad input: wrong passphrase, damaged and truncated headers, unsupported metadata —
one-line errors, image bytes unchanged — and the header parsers under hypothesis."""

import hashlib
import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptfs.errors import CryptfsError, FormatError, KeyMaterialError
from cryptfs.formats import luks1, luks2
from cryptfs.formats.luks import detect
from helpers import PASSPHRASE, cryptfs, needs_fuse, open_luks, sha256

FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


@pytest.fixture(scope="module")
def luks2_template(tmp_path_factory):
    image = tmp_path_factory.mktemp("luks2") / "image"
    result = cryptfs("format", image, "--size", "17M", "--key-file", "-", *FAST,
                     input=PASSPHRASE.encode())
    assert result.returncode == 0, result.stderr
    return image.read_bytes()


@pytest.fixture(scope="module")
def luks1_template(tmp_path_factory):
    image = tmp_path_factory.mktemp("luks1") / "image"
    result = cryptfs("format", image, "--type", "luks1", "--size", "3M", "--key-file", "-",
                     "--pbkdf-force-iterations", "1000", input=PASSPHRASE.encode())
    assert result.returncode == 0, result.stderr
    return image.read_bytes()


def refused(args, code, message, input=None):
    result = cryptfs(*args, input=input)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def resign(area: bytearray, offset: int) -> None:
    """Recompute one LUKS2 copy's checksum after editing it (to craft valid-looking headers)."""
    size = int.from_bytes(area[offset + 8:offset + 16], "big")
    copy = area[offset:offset + size]
    copy[448:512] = bytes(64)
    area[offset + 448:offset + 512] = hashlib.sha256(copy).digest() + bytes(32)


def edit_json(area: bytearray, change) -> None:
    for offset in (0, 16384):
        text = bytes(area[offset + 4096:offset + 16384]).split(b"\0", 1)[0]
        meta = json.loads(text)
        change(meta)
        new = json.dumps(meta).encode()
        area[offset + 4096:offset + 16384] = new + bytes(12288 - len(new))
        resign(area, offset)


def test_wrong_passphrase(tmp_path, luks2_template, luks1_template):
    for name, template in (("l2", luks2_template), ("l1", luks1_template)):
        image = tmp_path / name
        image.write_bytes(template)
        mnt = tmp_path / "mnt"
        mnt.mkdir(exist_ok=True)
        refused(["open", image, mnt, "--key-file", "-"], 2,
                "No key available with this passphrase.", input=b"not the passphrase")
        assert image.read_bytes() == template


@pytest.mark.parametrize("damage, code, message", [
    ("both", 4, "both LUKS2 headers are damaged"),
    ("truncated", 4, "is at or beyond the end of the image"),
    ("zeros", 4, "is not a LUKS image (for plain dm-crypt use --type plain)"),
    ("integrity", 4, "LUKS2 integrity (AEAD) segments are not supported"),
    ("reencrypt", 4, "LUKS2 requirement online-reencrypt-v2 is not supported"),
    ("cipher", 1, "cipher 'twofish'"),
    ("segments", 4, "LUKS2 with 2 segments is not supported"),
    ("plain-option", 1, "--cipher applies to plain mode; a LUKS header sets it"),
    ("luks1-wanted", 4, "is LUKS2, not LUKS1"),
])
def test_bad_images_get_one_line_and_stay_unchanged(tmp_path, luks2_template, damage, code,
                                                   message):
    area = bytearray(luks2_template)
    extra = []
    if damage == "both":
        area[4096 + 10] ^= 0xFF
        area[16384 + 4096 + 10] ^= 0xFF
    elif damage == "truncated":
        area = area[:1 << 20]
    elif damage == "zeros":
        area = bytearray(len(area))
    elif damage == "integrity":
        edit_json(area, lambda m: m["segments"]["0"].update(integrity={"type": "hmac(sha256)"}))
    elif damage == "reencrypt":
        edit_json(area, lambda m: m["config"].update(
            requirements={"mandatory": ["online-reencrypt-v2"]}))
    elif damage == "cipher":
        edit_json(area, lambda m: m["segments"]["0"].update(encryption="twofish-xts-plain64"))
    elif damage == "segments":
        edit_json(area, lambda m: m["segments"].update({"1": dict(m["segments"]["0"])}))
    elif damage == "plain-option":
        extra = ["--cipher", "aes-xts-plain64"]
    elif damage == "luks1-wanted":
        extra = ["--type", "luks1"]
    image = tmp_path / "image"
    image.write_bytes(area)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    refused(["open", image, mnt, "--key-file", "-", *extra], code, message,
            input=PASSPHRASE.encode())
    assert image.read_bytes() == area


def test_damaged_primary_opens_from_the_secondary_with_a_warning(tmp_path, luks2_template,
                                                                 caplog):
    area = bytearray(luks2_template)
    area[4096 + 10] ^= 0xFF                      # the primary's JSON: checksum mismatch
    image = tmp_path / "image"
    image.write_bytes(area)
    with caplog.at_level(logging.WARNING):
        daemon = open_luks(image)
    daemon.close()
    assert "primary LUKS2 header is damaged" in caplog.text
    result = cryptfs("dump", image)
    assert result.returncode == 0 and "primary LUKS2 header is damaged" in result.stderr
    assert image.read_bytes() == area


@needs_fuse
def test_damaged_primary_mounts_and_says_so(tmp_path, luks2_template):
    area = bytearray(luks2_template)
    area[100] ^= 0xFF                            # the primary's binary header
    image = tmp_path / "image"
    image.write_bytes(area)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = cryptfs("open", image, mnt, "--key-file", "-", input=PASSPHRASE.encode())
    assert result.returncode == 0, result.stderr
    assert "primary LUKS2 header is damaged" in result.stderr
    cryptfs("close", mnt, check=True)


def test_truncated_luks1(tmp_path, luks1_template):
    for size, message in ((300, "LUKS1 header truncated (300 of 592 bytes)"),
                          (600, "LUKS1 key slot 0 is truncated"),
                          (3 << 19, "is at or beyond the end of the image")):
        image = tmp_path / f"t{size}"
        image.write_bytes(luks1_template[:size])
        mnt = tmp_path / "mnt"
        mnt.mkdir(exist_ok=True)
        refused(["open", image, mnt, "--key-file", "-"], 4, message, input=PASSPHRASE.encode())


async def test_fixed_size_segment_and_iv_tweak(tmp_path, luks2_template):
    area = bytearray(luks2_template)
    edit_json(area, lambda m: m["segments"]["0"].update(size="65536", iv_tweak="8"))
    image = tmp_path / "image"
    image.write_bytes(area)
    daemon = open_luks(image)
    assert daemon.device.size == 65536
    assert daemon.stack.volume.geometry.iv_sector(0) == 8       # iv_tweak shifts every IV sector
    daemon.close()


def test_wrong_key_slot(tmp_path, luks2_template):
    image = tmp_path / "image"
    image.write_bytes(luks2_template)
    with pytest.raises(KeyMaterialError, match="key slot 3 is not an active key slot"):
        open_luks(image, key_slot=3)


def test_format_refuses_without_confirmation_and_on_bad_options(tmp_path):
    image = tmp_path / "image"
    image.write_bytes(bytes(20 << 20))
    before = sha256(image)
    refused(["format", image, "--key-file", "-", *FAST], 5, "Add --batch-mode to confirm",
            input=b"pw")
    refused(["format", image, "--batch-mode", "--type", "luks1", "--sector-size", "4096",
             "--key-file", "-", *FAST], 1, "LUKS1 has 512-byte sectors only", input=b"pw")
    refused(["format", image, "--batch-mode", "--key-size", "384", "--key-file", "-", *FAST], 1,
            "key size 384 bits is not valid", input=b"pw")
    small = tmp_path / "small"
    small.write_bytes(bytes(1 << 20))
    refused(["format", small, "--batch-mode", "--key-file", "-", *FAST], 4, "is too small",
            input=b"pw")
    assert sha256(image) == before


# --- the parsers under hypothesis: anything either parses or raises the domain error --------

def parse_luks2(data: bytes):
    return luks2.read(lambda off, n: data[off:off + n])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_luks1_parse(data):
    try:
        luks1.parse(data)
    except CryptfsError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40000))
def test_fuzz_luks2_random_bytes(data):
    try:
        parse_luks2(data)
    except FormatError:
        pass
    detect(lambda off, n: data[off:off + n])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(st.data())
def test_fuzz_luks_mutated_real_headers(luks2_template, luks1_template, data):
    """Flip bytes of real headers; for LUKS2 also re-sign them so the JSON gets parsed."""
    which = data.draw(st.sampled_from(["luks1", "luks2", "luks2-signed"]))
    area = bytearray((luks1_template[:4096] if which == "luks1" else luks2_template[:32768]))
    limit = 592 if which == "luks1" else 16384 + 4096 + 2000
    for _ in range(data.draw(st.integers(1, 8))):
        area[data.draw(st.integers(0, limit - 1))] = data.draw(st.integers(0, 255))
    if which == "luks2-signed":
        resign(area, 0)
        resign(area, 16384)
    try:
        luks1.parse(bytes(area)) if which == "luks1" else parse_luks2(bytes(area))
    except CryptfsError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_luks2_json_values(luks2_template, data):
    """Replace one JSON value anywhere with an arbitrary JSON value, keep checksums valid."""
    area = bytearray(luks2_template[:32768])
    values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                          lambda inner: st.lists(inner, max_size=3) |
                          st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)

    def change(meta):
        node = meta
        while isinstance(node, dict) and node and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict) or not node[key]:
                node[key] = data.draw(values)
                return
            node = node[key]
        if isinstance(node, dict) and node:
            node[data.draw(st.sampled_from(sorted(node)))] = data.draw(values)

    try:
        edit_json(area, change)
    except ValueError:        # the JSON no longer fits the area
        return
    try:
        parse_luks2(bytes(area))
    except CryptfsError:
        pass
