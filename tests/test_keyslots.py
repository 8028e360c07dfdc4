"""Key slot and header commands, both ways against cryptsetup 2.6: after each cryptfs command
cryptsetup accepts the header and opens with exactly the passphrases that should work; after
each cryptsetup command cryptfs does.  LUKS1 and LUKS2, embedded and detached headers, PBKDF2
and Argon2id.  Header backup and restore, and the commands' refusals."""

import os
import subprocess
from pathlib import Path

import pytest

from helpers import cryptfs, needs, sha256

pytestmark = [needs("cryptsetup"), pytest.mark.oracle]

SIZE = 20 << 20
CHEAP = {"pbkdf2": ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
         "argon2id": ["--pbkdf", "argon2id", "--pbkdf-force-iterations", "4",
                      "--pbkdf-memory", "32", "--pbkdf-parallel", "1"]}
CONFIGS = [("luks1", "pbkdf2", False), ("luks1", "pbkdf2", True),
           ("luks2", "pbkdf2", False), ("luks2", "pbkdf2", True),
           ("luks2", "argon2id", False), ("luks2", "argon2id", True)]
IDS = [f"{v}-{p}-{'detached' if d else 'embedded'}" for v, p, d in CONFIGS]


class Volume:
    """An image made by cryptsetup luksFormat, its (detached) header and passphrase files."""

    def __init__(self, tmp: Path, version: str, pbkdf: str, detached: bool):
        self.tmp, self.version, self.pbkdf = tmp, version, pbkdf
        self.image = tmp / "image"
        self.image.write_bytes(bytes(SIZE))
        self.header = tmp / "header" if detached else None
        self.secrets = {}
        for name in ("p0", "p1", "p2", "p3", "p4", "wrong"):
            self.secrets[name] = tmp / name
            self.secrets[name].write_text(f"passphrase {name} of {version}")
        self.cryptsetup("luksFormat", "--type", version, key="p0")

    def path_args(self) -> list[str]:
        return (["--header", str(self.header)] if self.header else []) + [str(self.image)]

    def cryptsetup(self, action: str, *args, key: str | None = None,
                   check: bool = True) -> subprocess.CompletedProcess:
        """cryptsetup ACTION [cheap PBKDF where it makes a key slot] [--header H] IMAGE ARGS."""
        cheap = CHEAP[self.pbkdf] if action in ("luksFormat", "luksAddKey",
                                                "luksChangeKey") else []
        cmd = ["cryptsetup", "--batch-mode", action, *cheap, *self.path_args(), *args]
        if key:
            cmd += ["--key-file", str(self.secrets[key])]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if check and result.returncode:
            raise AssertionError(f"{' '.join(cmd)}: {result.stderr}")
        return result

    def cryptfs(self, command: str, *args, check: bool = True):
        header = ["--header", str(self.header)] if self.header else []
        return cryptfs(command, self.image, *header, *args, check=check)

    def check(self, expected: set[str], also: tuple[str, ...] = ()) -> None:
        """cryptsetup accepts the header, and both tools open with exactly ``expected`` of
        ``expected`` + ``also`` (the passphrases that must no longer work)."""
        tried = sorted(expected | set(also))
        assert self.cryptsetup_opens(tried) == expected
        assert self.cryptfs_opens(tried) == expected

    def cryptsetup_opens(self, names) -> set[str]:
        self.cryptsetup("luksDump")
        return {name for name in names if self.cryptsetup(
            "open", "--test-passphrase", key=name, check=False).returncode == 0}

    def cryptfs_opens(self, names) -> set[str]:
        from cryptfs.core.config import Config
        from cryptfs.core.image import Image
        from cryptfs.core.volume import KeySource
        from cryptfs.errors import WrongPassphrase
        from cryptfs.formats import open_volume
        opened = set()
        config = Config()
        if self.header:
            config.set("device", "header", str(self.header))
        for name in names:
            path = self.secrets[name]
            image = Image(str(self.image), read_only=True)
            try:
                open_volume(image, config, KeySource(str(path))).close()
                opened.add(name)
            except WrongPassphrase:
                pass
            finally:
                image.close()
        return opened

    def slot_of(self, name: str) -> int:
        result = self.cryptsetup("open", "--test-passphrase", "-v", key=name)
        return int(result.stdout.split("Key slot ")[1].split()[0])


@pytest.fixture(params=CONFIGS, ids=IDS)
def volume(request, tmp_path):
    return Volume(tmp_path, *request.param)


def test_cryptfs_key_commands_as_cryptsetup_sees_them(volume):
    v, cheap = volume, CHEAP[volume.pbkdf]
    s = {k: str(p) for k, p in v.secrets.items()}
    v.check({"p0"}, also=("wrong",))

    v.cryptfs("luksAddKey", s["p1"], "--key-file", s["p0"], *cheap)
    v.check({"p0", "p1"}, also=("wrong",))

    v.cryptfs("luksChangeKey", s["p2"], "--key-file", s["p1"], *cheap)
    v.check({"p0", "p2"}, also=("p1",))

    v.cryptfs("luksAddKey", s["p3"], "-d", s["p2"], "--new-key-slot", "5", *cheap)
    assert v.slot_of("p3") == 5
    v.cryptfs("luksKillSlot", str(v.slot_of("p0")), "--key-file", s["p3"])
    v.check({"p2", "p3"}, also=("p0",))

    v.cryptfs("luksChangeKey", s["p4"], "-d", s["p3"], "-S", "5", *cheap)
    assert v.slot_of("p4") == 5             # -S keeps the slot, LUKS1 too
    v.cryptfs("luksRemoveKey", s["p2"])
    v.check({"p4"}, also=("p2", "p3"))


def test_cryptsetup_key_commands_as_cryptfs_sees_them(volume):
    v, s = volume, {k: str(p) for k, p in volume.secrets.items()}
    v.cryptsetup("luksAddKey", s["p1"], key="p0")
    v.check({"p0", "p1"}, also=("wrong",))
    v.cryptsetup("luksChangeKey", s["p2"], key="p1")
    v.check({"p0", "p2"}, also=("p1",))
    v.cryptsetup("luksKillSlot", str(v.slot_of("p0")), key="p2")
    v.check({"p2"}, also=("p0",))
    v.cryptsetup("luksAddKey", s["p3"], key="p2")
    v.cryptsetup("luksRemoveKey", s["p2"])
    v.check({"p3"}, also=("p2",))


@pytest.mark.parametrize("version, detached", [("luks1", False), ("luks2", False),
                                               ("luks2", True)],
                         ids=["luks1", "luks2", "luks2-detached"])
def test_header_backup_damage_restore_keeps_the_data(tmp_path, version, detached):
    import cryptfs
    v = Volume(tmp_path, version, "pbkdf2", detached)
    opened = dict(key_file=v.secrets["p0"], header=v.header)
    data = os.urandom(256 << 10)
    with cryptfs.open_image(v.image, read_only=False, **opened) as f:
        f.seek(4096)
        f.write(data)

    backup, theirs = tmp_path / "backup", tmp_path / "theirs"
    v.cryptfs("luksHeaderBackup", "--header-backup-file", backup)
    v.cryptsetup("luksHeaderBackup", "--header-backup-file", str(theirs))
    assert backup.read_bytes() == theirs.read_bytes()       # the same bytes as cryptsetup's
    assert backup.stat().st_mode & 0o777 == 0o400

    metadata = v.header or v.image
    with open(metadata, "r+b") as f:                        # both LUKS2 copies, LUKS1's phdr
        f.write(os.urandom(32 << 10))
    assert v.cryptsetup("isLuks", check=False).returncode == 1
    damaged = sha256(metadata)
    refused = v.cryptfs("luksHeaderRestore", "--header-backup-file", backup, check=False)
    assert refused.returncode == 5 and "Add --batch-mode to confirm" in refused.stderr
    assert sha256(metadata) == damaged

    v.cryptfs("luksHeaderRestore", "--header-backup-file", backup, "--batch-mode")
    v.check({"p0"}, also=("wrong",))
    with cryptfs.open_image(v.image, **opened) as f:
        f.seek(4096)
        assert f.read(len(data)) == data


@pytest.fixture
def luks2(tmp_path):
    return Volume(tmp_path, "luks2", "pbkdf2", False)


def refused(v: Volume, code: int, message: str, *args, input: bytes | None = None):
    before = sha256(v.image)
    result = cryptfs(*map(str, args), input=input)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryptfs: ") and message in lines[0], \
        result.stderr
    assert sha256(v.image) == before


def test_refusals_are_one_line_and_leave_the_image(luks2):
    v, s, img = luks2, {k: str(p) for k, p in luks2.secrets.items()}, luks2.image
    refused(v, 2, "No key available with this passphrase.", "luksAddKey", img, s["p1"],
            "-d", s["wrong"], *CHEAP["pbkdf2"])
    refused(v, 1, "Key slot 0 is full, please select another one.", "luksAddKey", img,
            s["p1"], "-d", s["p0"], "--new-key-slot", "0")
    refused(v, 1, "Keyslot 3 is not active.", "luksKillSlot", img, "3", "-d", s["p0"])
    refused(v, 1, "Requested header backup file", "luksHeaderBackup", img,
            "--header-backup-file", s["p1"])
    refused(v, 5, "This is the last keyslot.", "luksRemoveKey", img, s["p0"])
    refused(v, 1, "is not a UUID", "luksUUID", img, "--uuid", "nope", "-q")
    refused(v, 1, "--label must be at most 47 ASCII characters", "config", img,
            "--label", "x" * 48)
    # checked before any passphrase is asked for (stdin is empty)
    refused(v, 1, "config: --pbkdf-memory must be between", "luksAddKey", img,
            "--pbkdf-memory", "1", input=b"")
    result = cryptfs("luksAddKey", img, "--no-such-option")
    assert result.returncode == 1 and result.stderr.startswith("usage: cryptfs luksAddKey")


def test_luks1_refusals(tmp_path):
    v = Volume(tmp_path, "luks1", "pbkdf2", False)
    refused(v, 1, "LUKS1 supports only --pbkdf pbkdf2", "luksAddKey", v.image,
            "--pbkdf", "argon2id", input=b"")
    refused(v, 1, "is LUKS1, not LUKS2", "config", v.image, "--label", "x")


def test_isluks_and_uuid_answer_as_cryptsetup(luks2, tmp_path):
    v, other = luks2, tmp_path / "plain"
    other.write_bytes(bytes(1 << 20))
    for path, kind in [(v.image, "luks"), (v.image, "luks1"), (v.image, "luks2"),
                       (other, "luks"), (tmp_path / "missing", "luks")]:
        theirs = subprocess.run(["cryptsetup", "isLuks", "--type", kind, str(path)],
                                capture_output=True)
        assert cryptfs("isLuks", path, "--type", kind).returncode == theirs.returncode, path
    theirs = subprocess.run(["cryptsetup", "luksUUID", str(v.image)], capture_output=True,
                            text=True).stdout
    assert cryptfs("luksUUID", v.image, check=True).stdout == theirs
    cryptfs("luksUUID", v.image, "--uuid", "12345678-ABCD-4321-8765-0123456789AB", check=True)
    cryptfs("config", v.image, "--label", "data", "--subsystem", "backup", check=True)
    dump = v.cryptsetup("luksDump").stdout
    assert "UUID:          \t12345678-abcd-4321-8765-0123456789ab" in dump
    assert "Label:         \tdata" in dump and "Subsystem:     \tbackup" in dump
    v.check({"p0"})


def test_cryptsetup_calling_conventions(luks2):
    """Options before the command, passphrases on stdin (old, then new), positional key file
    and slot, lower-case aliases."""
    v, s = luks2, {k: str(p) for k, p in luks2.secrets.items()}
    old, new = (v.secrets[k].read_text() for k in ("p0", "p1"))
    cryptfs("-q", *CHEAP["pbkdf2"], "luksAddKey", v.image, input=f"{old}\n{new}\n".encode(),
            check=True)
    v.check({"p0", "p1"})
    result = cryptfs("-v", "kill-slot", v.image, str(v.slot_of("p1")), "--key-file", s["p0"],
                     check=True)
    assert result.stdout.splitlines()[-2:] == [f"Key slot {1} removed.", "Command successful."]
    v.check({"p0"}, also=("p1",))


def test_metadata_is_written_as_cryptsetup_writes_it(luks2):
    """Rewritten without a change, cryptsetup's JSON comes back byte for byte (json-c's plain
    form), in both copies, one epoch later."""
    v = luks2
    v.cryptsetup("config", "--label", "a/label", "--subsystem", "sub")
    subprocess.run(["cryptsetup", "token", "add", "--key-description", "k/d", "--key-slot", "0",
                    str(v.image)], check=True)
    before = v.image.read_bytes()[:32768]
    cryptfs("config", v.image, "--label", "a/label", check=True)
    after = v.image.read_bytes()[:32768]
    for copy in (0, 16384):
        assert after[copy + 4096:copy + 16384] == before[4096:16384]
    assert "Epoch:         \t" in (dump := v.cryptsetup("luksDump").stdout)
    epochs = [int(line.split()[-1]) for line in dump.splitlines() if line.startswith("Epoch:")]
    assert epochs == [int.from_bytes(before[16:24], "big") + 1]
