"""LUKS bad input: wrong passphrase, damaged and truncated headers, unsupported metadata —
one-line errors, image bytes unchanged — and the header parsers under hypothesis."""

import json
import logging
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptfs.errors import FormatError, KeyMaterialError
from cryptfs.formats import luks, luks1
from cryptfs.formats.luks2 import disk as luks2
from helpers import PASSPHRASE, cryptfs, needs, needs_fuse, open_luks, sha256
from luks_corpus import edit_json, json_of, resign, set_text

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


def test_wrong_passphrase(tmp_path, luks2_template, luks1_template):
    for name, template in (("l2", luks2_template), ("l1", luks1_template)):
        image = tmp_path / name
        image.write_bytes(template)
        mnt = tmp_path / "mnt"
        mnt.mkdir(exist_ok=True)
        refused(["open", image, mnt, "--key-file", "-"], 2,
                "No key available with this passphrase.", input=b"not the passphrase")
        assert image.read_bytes() == template


def two_segments(meta):
    """A valid reencryption-like layout: a fixed segment, then a dynamic one after it."""
    first = meta["segments"]["0"]
    second = dict(first, offset=str(int(first["offset"]) + (1 << 20)))
    first["size"] = str(1 << 20)
    meta["segments"]["1"] = second
    meta["digests"]["0"]["segments"].append("1")


@pytest.mark.parametrize("damage, code, message", [
    ("both", 1, "both LUKS2 headers are damaged"),
    ("truncated", 1, "the file is too small: its LUKS2 headers and key slots area need"),
    ("zeros", 1, "is not a LUKS image (for plain dm-crypt use --type plain)"),
    ("integrity", 1, "LUKS2 integrity (AEAD) segments are not supported"),
    ("reencrypt", 1, "LUKS2 requirement 'offline-reencrypt' is not supported"),
    ("cipher", 1, "cipher 'des3_ede'"),
    ("segments", 1, "LUKS2 with 2 segments is not supported"),
    ("plain-option", 1, "--cipher applies to plain mode; a LUKS header sets it"),
    ("luks1-wanted", 1, "is LUKS2, not LUKS1"),
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
        edit_json(area, lambda m: m["segments"]["0"].update(integrity={
            "type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"}))
    elif damage == "reencrypt":
        edit_json(area, lambda m: m["config"].update(
            requirements={"mandatory": ["offline-reencrypt"]}))
    elif damage == "cipher":
        edit_json(area, lambda m: m["segments"]["0"].update(encryption="des3_ede-xts-plain64"))
    elif damage == "segments":
        edit_json(area, two_segments)
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
    material_end = 4036 * 512               # the last key slot's material ends here
    for size, code, message in (
            (300, 1, "LUKS1 header truncated (300 of 592 bytes)"),
            (600, 1, f"the file is too small: LUKS1 requires at least {material_end} bytes"),
            (material_end, 4, "is at or beyond the end of the image")):
        image = tmp_path / f"t{size}"
        image.write_bytes(luks1_template[:size])
        mnt = tmp_path / "mnt"
        mnt.mkdir(exist_ok=True)
        refused(["open", image, mnt, "--key-file", "-"], code, message,
                input=PASSPHRASE.encode())


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


# --- the parsers under hypothesis: a clean refusal, or a header cryptsetup accepts too --------

class Oracle:
    """Reads bytes as a header file with cryptfs; whatever cryptfs accepts must pass
    ``cryptsetup luksDump`` on the same bytes.  Counts what it saw."""

    def __init__(self, directory):
        self.path = directory / "fuzzed"
        self.accepted = self.refused = 0

    def check(self, data: bytes, size: int) -> None:
        with open(self.path, "wb") as f:
            f.write(data)
            f.truncate(max(size, len(data)))
        try:
            with luks.HeaderFile(str(self.path)) as hdr:
                luks.read_header(hdr)
        except FormatError as e:
            assert "\n" not in str(e)
            self.refused += 1
            return
        self.accepted += 1
        if shutil.which("cryptsetup"):
            result = subprocess.run(["cryptsetup", "luksDump", str(self.path)],
                                    capture_output=True, text=True, errors="replace")
            assert result.returncode == 0, f"cryptfs accepts what cryptsetup refuses: " \
                                           f"{result.stderr.strip()}"


class Image(bytes):
    """An image's bytes that hypothesis reports by size, not content."""

    def __repr__(self) -> str:
        return f"<image of {len(self)} bytes>"


@pytest.fixture(scope="module")
def images(luks1_template, luks2_template):
    return Image(luks1_template), Image(luks2_template)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    return Oracle(tmp_path_factory.mktemp("fuzz"))


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=False)


@pytest.mark.slow
@needs("cryptsetup")
@FUZZ
@given(st.binary(max_size=40000))
def test_fuzz_random_bytes(oracle, data):
    oracle.check(data, 0)
    oracle.check(luks1.MAGIC + b"\0\1" + data, 0)
    oracle.check(luks2.MAGIC_PRIMARY + b"\0\2" + data, 0)


@pytest.mark.slow
@needs("cryptsetup")
@FUZZ
@given(st.data())
def test_fuzz_mutated_real_headers(images, oracle, data):
    """Bytes of real headers changed; LUKS2 copies re-signed so that the JSON gets parsed."""
    which = data.draw(st.sampled_from(["luks1", "luks2", "luks2-signed"]))
    template = images[0] if which == "luks1" else images[1]
    area = bytearray(template[:4096] if which == "luks1" else template[:32768])
    limit = 592 if which == "luks1" else 16384 + 4096 + 2000
    for _ in range(data.draw(st.integers(1, 8))):
        area[data.draw(st.integers(0, limit - 1))] = data.draw(st.integers(0, 255))
    if which == "luks2-signed":
        for offset in (0, 16384):
            resign(area, offset, "sha256")
    oracle.check(bytes(area), len(template))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() |
    st.text(max_size=12) | st.sampled_from(["0", "512", "4096", "dynamic", "luks2", "pbkdf2",
                                            "crypt", "-1", " 1", "18446744073709551616"]),
    lambda inner: st.lists(inner, max_size=3) |
    st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


@pytest.mark.slow
@needs("cryptsetup")
@FUZZ
@given(st.data())
def test_fuzz_luks2_json_values(images, oracle, data):
    """One JSON value anywhere replaced with an arbitrary one, in both copies, re-signed."""
    area = bytearray(images[1][:32768])

    def change(meta):
        node = meta
        while isinstance(node, dict) and node and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict) or not node[key]:
                node[key] = data.draw(JSON_VALUES)
                return
            node = node[key]
        if isinstance(node, dict) and node:
            node[data.draw(st.sampled_from(sorted(node)))] = data.draw(JSON_VALUES)

    meta = json_of(area)
    change(meta)
    try:
        set_text(area, json.dumps(meta).encode())
    except ValueError:        # the JSON no longer fits the area
        return
    oracle.check(bytes(area), len(images[1]))


@pytest.mark.slow
@needs("cryptsetup")
def test_fuzzers_saw_both_verdicts(oracle):
    """The fuzzers above ran (in this order) and met accepted and refused headers."""
    assert oracle.accepted > 10 and oracle.refused > 100, vars(oracle)
