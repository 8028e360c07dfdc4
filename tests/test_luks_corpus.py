"""The corpus: every case of luks_corpus.py applied to headers cryptsetup luksFormat made (LUKS1,
and LUKS2 with every metadata size from 16 KiB to 4 MiB), and for each one cryptfs's verdict is
cryptsetup luksDump's — accepted or refused — on the same file; where both accept, the dumps are
the same bytes; where cryptfs refuses, it says so in one line and leaves the file as it was.

Then the dangerous cases as named tests: a data area over the header (LUKS1 payload offset 0,
a LUKS2 segment inside the key slots area or at 0), and a primary LUKS2 header overwritten by an
LVM2 physical volume label, a filesystem or a partition table."""

import struct
import subprocess
import zlib

import pytest

from cryptfs.errors import FormatError
from cryptfs.formats import luks
from helpers import PASSPHRASE, cryptfs, cryptsetup, needs, sha256
from luks_corpus import EVERY_SIZE, LUKS1_CASES, LUKS2_CASES, edit_json

pytestmark = needs("cryptsetup", "blkid")

FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
METADATA = ["16k", "32k", "64k", "128k", "256k", "512k", "1m", "2m", "4m"]
IMAGE_SIZE = 18 << 20


BASES = ["luks1"] + [f"luks2-{m}" for m in METADATA]
#: every case runs on these; the other metadata sizes run the EVERY_SIZE cases
FULL = ("luks1", "luks2-16k", "luks2-4m")
CASES = [pytest.param(base, mutate, id=f"{base}-{name}") for base in BASES
         for name, mutate in (LUKS1_CASES if base == "luks1" else LUKS2_CASES)
         if base in FULL or name in EVERY_SIZE]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, bytes]:
    """The header region (headers and key slots) of one luksFormat image per base."""
    out = {}
    for base in BASES:
        image = tmp_path_factory.mktemp("base") / base
        with open(image, "wb") as f:
            f.truncate(IMAGE_SIZE)
        kind = ["--type", "luks1", "--pbkdf-force-iterations", "1000"] if base == "luks1" else \
            ["--type", "luks2", *FAST, "--luks2-metadata-size", base.split("-")[1],
             "--luks2-keyslots-size", "1m", "--sector-size", "4096"]
        cryptsetup("luksFormat", *kind, str(image))
        region = 2 << 20 if base == "luks1" else 2 * _bytes(base.split("-")[1]) + (1 << 20)
        with open(image, "rb") as f:
            out[base] = f.read(region)
    return out


def _bytes(size: str) -> int:
    return int(size[:-1]) << (10 if size[-1] == "k" else 20)


def cryptfs_verdict(path) -> tuple[bool, str]:
    """(accepted, the dump or the refusal) from cryptfs, in process."""
    try:
        with luks.HeaderFile(str(path)) as hdr:
            module, header = luks.read_header(hdr)
            return True, module.dump(header, str(path))
    except FormatError as e:
        return False, str(e)


@pytest.mark.parametrize("base, mutate", CASES)
def test_verdict_agrees_with_cryptsetup(tmp_path, bases, base, mutate):
    area = bytearray(bases[base])
    shorter = mutate(area)
    path = tmp_path / "image"
    with open(path, "wb") as f:
        if isinstance(shorter, bytearray):
            f.write(shorter)
        else:
            f.write(area)
            f.truncate(IMAGE_SIZE)
    before = sha256(path)
    accepted, text = cryptfs_verdict(path)
    assert sha256(path) == before, "cryptfs changed the image"
    theirs = subprocess.run(["cryptsetup", "luksDump", str(path)], capture_output=True)
    assert accepted == (theirs.returncode == 0), (text, theirs.stderr.decode())
    if accepted:
        assert text.encode("utf-8", "surrogateescape") == theirs.stdout
    else:
        assert "\n" not in text and text


# --- the named cases -------------------------------------------------------------------------

@pytest.fixture
def luks1_image(tmp_path):
    image = tmp_path / "luks1"
    with open(image, "wb") as f:
        f.truncate(4 << 20)
    cryptsetup("luksFormat", "--type", "luks1", "--pbkdf-force-iterations", "1000", str(image))
    return image


@pytest.fixture
def luks2_image(tmp_path):
    image = tmp_path / "luks2"
    with open(image, "wb") as f:
        f.truncate(20 << 20)
    cryptsetup("luksFormat", "--type", "luks2", *FAST, str(image))
    return image


def open_refused(tmp_path, image, message: str, *extra) -> str:
    """``cryptfs open`` refuses ``image`` in one line with exit 1; the image is unchanged."""
    before = sha256(image)
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    result = cryptfs("open", image, mnt, "--key-file", "-", *extra, input=PASSPHRASE.encode())
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert sha256(image) == before
    return lines[0]


def test_luks1_payload_offset_zero_overlaps_the_header(tmp_path, luks1_image):
    area = bytearray(luks1_image.read_bytes())
    struct.pack_into(">I", area, 104, 0)
    luks1_image.write_bytes(area)
    cryptsetup("luksDump", str(luks1_image), passphrase=None)      # a valid header, as such
    open_refused(tmp_path, luks1_image, "Device header overlaps with data area: the LUKS1 "
                                        "payload offset is 0")


def test_luks2_segment_inside_the_keyslots_area(tmp_path, luks2_image):
    area = bytearray(luks2_image.read_bytes())
    edit_json(area, lambda m: m["segments"]["0"].update(offset=str(1 << 20)))
    luks2_image.write_bytes(area)
    with pytest.raises(AssertionError):                             # cryptsetup refuses it too
        cryptsetup("luksDump", str(luks2_image), passphrase=None)
    line = open_refused(tmp_path, luks2_image, "config.keyslots_size")
    assert "overlaps the data at 1048576" in line


def test_luks2_segment_offset_zero_overlaps_the_header(tmp_path, luks2_image):
    area = bytearray(luks2_image.read_bytes())
    edit_json(area, lambda m: m["segments"]["0"].update(offset="0"))
    luks2_image.write_bytes(area)
    cryptsetup("luksDump", str(luks2_image), passphrase=None)
    open_refused(tmp_path, luks2_image, "Device header overlaps with data area: the LUKS2 "
                                        "segment 0 offset is 0")


def lvm2_label(uuid: bytes = b"A" * 32) -> bytes:
    """An LVM2 physical volume label as pvcreate writes it in sector 1 (LABELONE, its CRC)."""
    label = bytearray(512)
    label[0:8] = b"LABELONE"
    struct.pack_into("<Q", label, 8, 1)                 # the sector it is in
    struct.pack_into("<I", label, 20, 32)               # offset of the PV header
    label[24:32] = b"LVM2 001"
    label[32:64] = uuid
    struct.pack_into("<Q", label, 64, 20 << 20)         # device size
    crc = zlib.crc32(label[20:], 0xF597A6CF ^ 0xFFFFFFFF) ^ 0xFFFFFFFF    # LVM's CRC-32
    struct.pack_into("<I", label, 16, crc)
    return bytes(label)


def ext4_start(tmp_path) -> bytes:
    fs = tmp_path / "fs"
    with open(fs, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs)], check=True)
    return fs.read_bytes()[:16384]


def dos_mbr() -> bytes:
    mbr = bytearray(512)
    mbr[446:462] = bytes([0x00, 0, 2, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 8192)
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


@needs("mkfs.ext4")
@pytest.mark.parametrize("what, signature", [("lvm2", "LVM2_member"), ("ext4", "ext4"),
                                             ("mbr", "partition table dos")])
def test_another_signature_over_the_primary_header(tmp_path, luks2_image, what, signature):
    area = bytearray(luks2_image.read_bytes())
    if what == "lvm2":
        area[512:1024] = lvm2_label()
    elif what == "ext4":
        area[:16384] = ext4_start(tmp_path)
    else:
        area[:512] = dos_mbr()
    luks2_image.write_bytes(area)
    probe = subprocess.run(["blkid", "-p", "-n", "nocrypto_LUKS", "-o", "export",
                            str(luks2_image)], capture_output=True, text=True)
    assert probe.returncode == 0 and signature.split()[-1] in probe.stdout, probe
    line = open_refused(tmp_path, luks2_image, "Device contains ambiguous signatures")
    assert signature in line and 'Please run "cryptsetup repair"' in line
    dump = cryptfs("dump", luks2_image)
    assert dump.returncode == 1 and "ambiguous signatures" in dump.stderr
    copy = tmp_path / "copy"
    copy.write_bytes(luks2_image.read_bytes())
    with pytest.raises(AssertionError, match="ambiguous signatures"):
        cryptsetup("luksDump", str(copy), passphrase=None)


def test_a_damaged_primary_without_another_signature_is_read_around(luks2_image):
    area = bytearray(luks2_image.read_bytes())
    area[600] ^= 1                                       # damage, not a signature
    luks2_image.write_bytes(area)
    with luks.HeaderFile(str(luks2_image)) as hdr:
        _, header = luks.read_header(hdr)
    assert header.damaged == "primary" and "cryptsetup repair" in header.warnings[0]
