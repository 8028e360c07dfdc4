"""The header protocol, in process: LUKS1 and LUKS2 headers answer the same questions (data
segment, key slots, unlock, add / change / kill, write) without the caller branching on the
version; the one LUKS2 writer's output parses back and repairs a stale copy first; the binary
headers are packed by field name; errors carry their reason as data; and cryptsetup accepts
what the writers wrote."""

import json
import os
import subprocess

import pytest

from cryptfs.crypto.keys import Secret
from cryptfs.errors import ConfigError, KeyMaterialError, WrongPassphrase
from cryptfs.formats import af, luks
from cryptfs.formats.kdf import Kdf
from cryptfs.formats.keyslot_area import seal, unseal
from cryptfs.formats.luks1 import HEADER_SIZE, KEYSLOT, PHDR, Luks1Header
from cryptfs.formats.luks2 import disk
from cryptfs.formats.luks2.disk import BINARY, CSUM, DamagedCopy, MissingCopy
from cryptfs.formats.luks2.header import DamagedHeader, Luks2Header
from cryptfs.formats.luks2.jsonc import on_disk
from cryptfs.formats.params import PbkdfOptions, kdf_kind
from helpers import needs

PASS, OTHER = Secret(b"first passphrase"), Secret(b"second passphrase")
FORMATS = [Luks1Header, Luks2Header]


def fast_kdf() -> Kdf:
    return Kdf("pbkdf2", os.urandom(32), 1000, "sha256")


class MemoryFile:
    """A header file in memory, with the writable header file's methods."""

    path = "<memory>"

    def __init__(self, writes: dict[int, bytes]):
        self.data = bytearray(max(offset + len(data) for offset, data in writes.items()))
        for offset, data in writes.items():
            self.write(offset, data)

    def read_at(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length])

    def write(self, offset: int, data) -> None:
        self.data[offset:offset + len(data)] = data

    def wipe(self, offset: int, length: int) -> None:
        self.write(offset, os.urandom(length))


def new(kind, cipher="aes-xts-plain64", key_bytes=64, detached=False):
    key = Secret(os.urandom(key_bytes))
    header, writes = kind.create(key, cipher, 512, PASS, fast_kdf(), 1000, "sha256", detached)
    return key, header, MemoryFile(writes)


# --- the binary headers, by field name ------------------------------------------------------

def test_binary_layouts_are_the_specifications():
    assert (PHDR.size, KEYSLOT.size, HEADER_SIZE) == (208, 48, 592)
    assert PHDR.spans["payload_offset"] == slice(104, 108)
    assert PHDR.spans["uuid"] == slice(168, 208)
    assert BINARY.size == 512 and CSUM == slice(448, 512)
    assert BINARY.spans["hdr_offset"] == slice(256, 264)
    assert BINARY.spans["salt"] == slice(104, 168)


@pytest.mark.parametrize("kind", FORMATS)
def test_a_new_header_reads_back_as_created(kind):
    key, header, f = new(kind)
    again = kind.read(f.read_at)
    assert again.uuid == header.uuid and again.segment == header.segment
    assert again.active_slots() == [0]
    opened, slot = again.unlock(f.read_at, PASS)
    assert (opened.buffer, slot) == (key.buffer, 0)


def test_luks1_packs_what_it_unpacks():
    _, header, f = new(Luks1Header)
    assert header.pack() == f.read_at(0, HEADER_SIZE)
    assert Luks1Header.unpack(header.pack()) == header
    raw = bytearray(header.pack())
    raw[PHDR.spans["cipher_mode"]] = b"cbc-essiv:sha256".ljust(32, b"\0")
    assert Luks1Header.unpack(raw).cipher == "aes-cbc-essiv:sha256"


def test_luks2_copies_are_json_c_text_with_checksums():
    _, header, f = new(Luks2Header)
    for i, name in enumerate(("primary", "secondary")):
        fields, area = disk.read_copy(f.read_at, i * header.hdr_size, name)
        assert (fields.seqid, fields.uuid, fields.checksum_alg) == (1, header.uuid, "sha256")
        assert fields.hdr_offset == i * header.hdr_size
        text = area[disk.BINARY_SIZE:].rstrip(b"\0")
        assert text == on_disk(header.metadata).encode()
        assert fields.csum[:32] == disk.checksum("sha256", area)


# --- the protocol: the same questions, either version -------------------------------------

@pytest.mark.parametrize("kind", FORMATS)
def test_segment_and_offsets(kind):
    _, header, _ = new(kind)
    assert header.segment.offset == kind.default_data_offset(64)
    assert header.segment.encryption == "aes-xts-plain64"
    assert header.segment.sector_size == 512 and header.segment.size is None
    assert header.payload_offset * 512 == header.segment.offset
    assert (header.cipher_name, header.cipher_mode) == ("aes", "xts-plain64")
    assert header.metadata_size <= header.areas_size <= header.segment.offset
    _, detached, _ = new(kind, detached=True)
    assert detached.segment.offset == 0


@pytest.mark.parametrize("kind", FORMATS)
def test_key_slots_add_change_kill(kind):
    key, header, f = new(kind)
    assert header.check_new_slot(None) == 1
    with pytest.raises(Exception, match="Key slot 0 is full"):
        header.check_new_slot(0)
    header = header.add_slot(f, 3, key, OTHER, fast_kdf(), 0, "sha256")
    assert kind.read(f.read_at).active_slots() == header.active_slots() == [0, 3]
    assert header.unlock(f.read_at, OTHER)[1] == 3
    header, slot = header.change_slot(f, 3, key, Secret(b"third"), fast_kdf(), "sha256",
                                      keep_slot=True)
    assert slot == 3
    with pytest.raises(WrongPassphrase):
        header.unlock(f.read_at, OTHER)
    header = header.kill_slot(f, 0)
    assert kind.read(f.read_at).active_slots() == [3]
    with pytest.raises(WrongPassphrase):
        header.unlock(f.read_at, PASS)
    opened, slot = kind.read(f.read_at).unlock(f.read_at, Secret(b"third"))
    assert (opened.buffer, slot) == (key.buffer, 3)
    with pytest.raises(KeyMaterialError):
        header.unlock(f.read_at, PASS, slot=0)


@pytest.mark.parametrize("kind", FORMATS)
def test_write_a_new_uuid(kind):
    _, header, f = new(kind)
    written = header.write(f, uuid="12345678-1234-1234-1234-123456789abc")
    assert kind.read(f.read_at).uuid == written.uuid == "12345678-1234-1234-1234-123456789abc"


def test_kdf_kinds_come_from_the_header():
    assert kdf_kind(PbkdfOptions(), "luks1") == "pbkdf2"
    assert kdf_kind(PbkdfOptions(), "luks2") == "argon2id"
    with pytest.raises(ConfigError, match="LUKS1 supports only --pbkdf pbkdf2"):
        kdf_kind(PbkdfOptions(pbkdf="argon2i"), "luks1")


def test_luks1_has_512_byte_sectors_only():
    Luks2Header.check_sector_size(4096)
    with pytest.raises(ConfigError, match="LUKS1 has 512-byte sectors only"):
        Luks1Header.check_sector_size(4096)


# --- the one LUKS2 writer ---------------------------------------------------------------------

def test_luks2_write_is_the_next_version_in_both_copies():
    _, header, f = new(Luks2Header)
    written = header.write(f, label="data", subsystem="sub")
    assert written.seqid == 2
    for i, name in enumerate(("primary", "secondary")):
        fields, _ = disk.read_copy(f.read_at, i * header.hdr_size, name)
        assert (fields.seqid, fields.label, fields.subsystem) == (2, "data", "sub")
    again = Luks2Header.read(f.read_at)
    assert (again.seqid, again.label, again.damaged) == (2, "data", None)


def test_luks2_write_repairs_a_damaged_copy_first():
    _, header, f = new(Luks2Header)
    f.data[header.hdr_size + 5000] ^= 0xFF              # the secondary's JSON
    damaged = Luks2Header.read(f.read_at)
    assert damaged.damaged == "secondary" and damaged.warnings
    written = damaged.write(f, label="x")
    again = Luks2Header.read(f.read_at)
    assert (again.seqid, again.label, again.damaged) == (written.seqid, "x", None)


def test_luks2_write_refuses_when_no_copy_is_the_one_read():
    _, header, f = new(Luks2Header)
    header.write(f)                                     # now at seqid 2 on disk
    with pytest.raises(Exception, match="matches the metadata read"):
        header.write(f)                                 # header still says 1


def test_luks2_write_checks_before_writing():
    _, header, f = new(Luks2Header)
    before = bytes(f.data)
    with pytest.raises(Exception, match="does not fit"):
        header.write(f, metadata=dict(header.metadata, tokens={"0": {
            "type": "x" * 20000, "keyslots": []}}))
    assert bytes(f.data) == before


# --- errors as data -------------------------------------------------------------------------

def test_both_copies_damaged_in_the_same_json_say_it_once():
    _, header, f = new(Luks2Header)
    meta = json.loads(on_disk(header.metadata))
    meta["segments"]["0"]["sector_size"] = 100          # invalid: the writer would refuse it
    for i, name in enumerate(("primary", "secondary")):
        fields = BINARY.type(magic=disk.MAGICS[name], version=2, hdr_size=header.hdr_size,
                             seqid=1, checksum_alg="sha256", salt=bytes(64), uuid=header.uuid,
                             hdr_offset=i * header.hdr_size)
        f.write(i * header.hdr_size, disk.pack_copy(fields, on_disk(meta).encode()))
    with pytest.raises(DamagedHeader) as e:
        Luks2Header.read(f.read_at)
    copies = e.value.copies
    assert set(copies) == {"primary", "secondary"}
    assert all(c.in_json for c in copies.values())
    assert copies["primary"].reason == copies["secondary"].reason
    assert "sector_size" in copies["primary"].reason
    assert str(e.value) == f"both LUKS2 headers are damaged (both: {copies['primary'].reason})"


def test_binary_damage_is_named_per_copy():
    _, header, f = new(Luks2Header)
    f.data[100] ^= 0xFF
    f.data[header.hdr_size + 100] ^= 0xFF
    with pytest.raises(DamagedHeader) as e:
        Luks2Header.read(f.read_at)
    copies = e.value.copies
    assert [c.reason for c in copies.values()] == ["has a bad checksum"] * 2
    assert not any(c.in_json for c in copies.values())
    assert "the primary LUKS2 header at 0 has a bad checksum; the secondary" in str(e.value)


def test_a_missing_copy_is_its_own_type():
    _, header, f = new(Luks2Header)
    f.data[0:6] = bytes(6)
    with pytest.raises(MissingCopy) as e:
        disk.read_copy(f.read_at, 0, "primary")
    assert isinstance(e.value, DamagedCopy) and e.value.copy == "primary"
    assert Luks2Header.read(f.read_at).damaged == "primary"


# --- key material -----------------------------------------------------------------------------

@pytest.mark.parametrize("key_bytes", [16, 33, 64])
def test_af_and_sealing_round_trip(key_bytes):
    key = Secret(os.urandom(key_bytes))
    material = bytearray(key_bytes * 4000)
    af.split(key, 4000, "sha256", memoryview(material))
    assert af.merge(material, key_bytes, 4000, "sha256").buffer == key.buffer
    kdf = fast_kdf()
    sealed = seal(key, PASS, kdf, "aes-xts-plain64", 64, 4000, "sha1")
    assert len(sealed) % 512 == 0 and bytes(key.buffer) not in sealed
    opened = unseal(lambda offset, n: bytes(sealed[offset:offset + n]), 0, PASS, kdf,
                    "aes-xts-plain64", 64, key_bytes, 4000, "sha1", "test")
    assert opened.buffer == key.buffer


@pytest.mark.parametrize("kind", ["pbkdf2", "argon2i", "argon2id"])
def test_kdf_derives_into_a_secret(kind):
    kdf = Kdf(kind, bytes(32), 4, "sha256", memory=32, parallel=1) if kind != "pbkdf2" else \
        Kdf(kind, bytes(32), 1000, "sha256")
    key = kdf.derive(PASS, 32)
    assert isinstance(key, Secret) and len(key) == 32
    assert key.buffer == kdf.derive(Secret(bytes(PASS.buffer)), 32).buffer


# --- what cryptsetup makes of it -------------------------------------------------------------

@pytest.fixture
def image_of(tmp_path):
    def write(f: MemoryFile):
        path = tmp_path / "image"
        path.write_bytes(bytes(f.data) + bytes(1 << 20))
        return path
    return write


def luks_dump(path) -> str:
    result = subprocess.run(["cryptsetup", "luksDump", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def opens(path, passphrase: Secret) -> bool:
    return subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file", "-",
                           str(path)], input=bytes(passphrase.buffer),
                          capture_output=True).returncode == 0


@needs("cryptsetup")
@pytest.mark.parametrize("kind", FORMATS)
def test_cryptsetup_accepts_what_the_writers_wrote(kind, image_of):
    key, header, f = new(kind)
    header = header.add_slot(f, 2, key, OTHER, fast_kdf(), 0, "sha256")
    header = header.kill_slot(f, 0)
    header = header.write(f, uuid="12345678-1234-1234-1234-123456789abc")
    path = image_of(f)
    dump = luks_dump(path)
    assert "12345678-1234-1234-1234-123456789abc" in dump
    with luks.HeaderFile(str(path)) as hdr:
        ours = luks.read(hdr)
        assert ours.dump(str(path)) == dump
    assert opens(path, OTHER) and not opens(path, PASS)


@needs("cryptsetup")
def test_cryptsetup_reads_the_luks2_writer_byte_for_byte(image_of, tmp_path):
    """A header cryptsetup wrote, rewritten unchanged by cryptfs: the same JSON text."""
    path = tmp_path / "theirs"
    path.write_bytes(bytes(20 << 20))
    subprocess.run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf",
                    "pbkdf2", "--pbkdf-force-iterations", "1000", "--label", "a/b", "--key-file",
                    "-", str(path)], input=b"pw", check=True, capture_output=True)
    before = path.read_bytes()
    f = MemoryFile({0: before})
    header = Luks2Header.read(f.read_at).write(f)
    assert f.data[4096:16384] == before[4096:16384]
    assert f.data[16384 + 4096:32768] == before[16384 + 4096:32768]
    out = image_of(f)
    assert f"Epoch:         \t{header.seqid}\n" in luks_dump(out)
