"""An interrupted key operation never loses the volume.

Each key command runs in a forked child that is killed with SIGKILL in the middle of one of
its writes — after a random number of whole sectors of it reached the file, the torn writes a
crash or a power cut leaves — at every write the command makes in turn, then once more by an
outside SIGKILL at a random moment.  Afterwards both cryptfs and cryptsetup must open the image
with the same passphrases: the ones from before or the ones from after (a change may leave
both), never fewer; and a following cryptfs command must work on what was left (it repairs a
stale LUKS2 copy first).
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cryptfs.core.config import Config
from cryptfs.core.image import Image
from cryptfs.core.volume import KeySource
from cryptfs.errors import WrongPassphrase
from cryptfs.formats import open_volume
from helpers import ROOT, needs

pytestmark = [needs("cryptsetup"), pytest.mark.oracle]

CHEAP = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
SIZES = {"luks1": 3 << 20, "luks2": 17 << 20}
NAMES = ("p0", "p1", "p2", "p3")
# command → (arguments after IMAGE, passphrases before, after)
OPERATIONS = {
    "add": (["{p2}", "-d", "{p1}", *CHEAP], {"p0", "p1"}, {"p0", "p1", "p2"}),
    "change": (["{p2}", "-d", "{p1}", *CHEAP], {"p0", "p1"}, {"p0", "p2"}),
    "change-keep-slot": (["{p2}", "-d", "{p1}", "-S", "1", *CHEAP], {"p0", "p1"},
                         {"p0", "p2"}),
    "kill": (["1", "-d", "{p0}"], {"p0", "p1"}, {"p0"}),
    "remove": (["{p1}", "--batch-mode"], {"p0", "p1"}, {"p0"}),
}
COMMANDS = {"add": "luksAddKey", "change": "luksChangeKey", "change-keep-slot": "luksChangeKey",
            "kill": "luksKillSlot", "remove": "luksRemoveKey"}
CASES = [("luks1", op) for op in OPERATIONS] + \
        [("luks2", op) for op in OPERATIONS if op != "change-keep-slot"]


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Per version: an image by cryptsetup with p0 in slot 0 and p1 in slot 1."""
    tmp = tmp_path_factory.mktemp("crash")
    secrets = {}
    for name in NAMES:
        secrets[name] = tmp / name
        secrets[name].write_text(f"crash test passphrase {name}")
    images = {}
    for version, size in SIZES.items():
        image = tmp / f"{version}.img"
        image.write_bytes(bytes(size))
        for args in (["luksFormat", "--type", version, str(image), "-d", str(secrets["p0"])],
                     ["luksAddKey", str(image), str(secrets["p1"]), "-d", str(secrets["p0"])]):
            subprocess.run(["cryptsetup", "-q", *args, *CHEAP], check=True)
        images[version] = image
    return images, secrets


def argv(version_image, op: str, secrets) -> list[str]:
    args, _, _ = OPERATIONS[op]
    names = {k: str(v) for k, v in secrets.items()}
    return [COMMANDS[op], str(version_image), *(a.format(**names) for a in args)]


def run_killed_at(args: list[str], write: int, sectors: int = 0) -> int:
    """Run the CLI in a forked child that is SIGKILLed inside its ``write``-th pwrite, once
    the first ``sectors`` 512-byte sectors of it reached the file; returns the number of
    pwrites it made if it finished first."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                # the child: cryptfs, with a trap in pwrite
        os.close(read_end)
        real, calls = os.pwrite, [0]

        def pwrite(fd, data, offset):
            calls[0] += 1
            if calls[0] == write:
                if sectors:
                    real(fd, memoryview(data)[:sectors * 512], offset)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(fd, data, offset)
        os.pwrite = pwrite
        try:
            from cryptfs.cli.commands import main
            sys.stdin = open(os.devnull)
            code = main(args)
        except BaseException:
            code = 99
        os.write(write_end, f"{code} {calls[0]}".encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    if not report:
        return -1                               # killed
    code, calls = map(int, report.split())
    assert code == 0, f"cryptfs {' '.join(args)} failed ({code})"
    return calls


def tear(rng: random.Random) -> int:
    """Sectors of the interrupted write that reach the file: none to 16 — within a LUKS2
    header copy's binary header and the start of its JSON, or a LUKS1 header's two sectors
    (a shorter write is then whole)."""
    return rng.randrange(17)


def cryptfs_opens(image, secrets, names=NAMES) -> set[str]:
    opened = set()
    for name in names:
        img = Image(str(image), read_only=True)
        try:
            open_volume(img, Config(), KeySource(str(secrets[name]))).close()
            opened.add(name)
        except WrongPassphrase:
            pass
        finally:
            img.close()
    return opened


def cryptsetup_opens(image, secrets, names=NAMES) -> set[str]:
    subprocess.run(["cryptsetup", "luksDump", str(image)], check=True, capture_output=True)
    return {name for name in names if subprocess.run(
        ["cryptsetup", "open", "--test-passphrase", str(image), "-d", str(secrets[name])],
        capture_output=True).returncode == 0}


def check_survivor(image, secrets, op: str, where: str) -> None:
    _, before, after = OPERATIONS[op]
    allowed = [before, after] + ([before | after] if op.startswith("change") else [])
    theirs = image.with_suffix(".cryptsetup")
    shutil.copyfile(image, theirs)           # cryptsetup may repair what it reads
    mine = cryptfs_opens(image, secrets)
    assert mine in allowed, f"{where}: cryptfs opens with {sorted(mine)}"
    assert cryptsetup_opens(theirs, secrets) == mine, where
    # the next command works on what was left: add p3, with a passphrase that still opens
    from cryptfs.cli.commands import main
    with_key = sorted(mine & {"p0", "p1", "p2"})[0]
    assert main(["luksAddKey", str(image), str(secrets["p3"]), "-d", str(secrets[with_key]),
                 "-q", *CHEAP]) == 0, where
    assert cryptsetup_opens(image, secrets, (with_key, "p3")) == {with_key, "p3"}, where


@pytest.mark.parametrize("version, op", CASES, ids=[f"{v}-{o}" for v, o in CASES])
def test_sigkill_inside_every_write(templates, tmp_path, version, op):
    images, secrets = templates
    rng = random.Random(f"{version}-{op}")
    image = tmp_path / "image"
    shutil.copyfile(images[version], image)
    writes = run_killed_at(argv(image, op, secrets), 0)     # a whole run, counted
    assert writes >= 2
    for write in range(1, writes + 1):
        shutil.copyfile(images[version], image)
        assert run_killed_at(argv(image, op, secrets), write, tear(rng)) == -1
        check_survivor(image, secrets, op, f"killed in write {write} of {writes}")


@pytest.mark.parametrize("version", SIZES)
def test_sigkill_at_random_moments(templates, tmp_path, version):
    images, secrets = templates
    rng = random.Random(version)
    image = tmp_path / "image"
    cmd = [sys.executable, "-m", "cryptfs", *argv(image, "change", secrets)]
    shutil.copyfile(images[version], image)
    start = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT, stdin=subprocess.DEVNULL)
    duration = time.monotonic() - start
    for run in range(6):
        shutil.copyfile(images[version], image)
        child = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        child.send_signal(signal.SIGKILL)
        child.wait()
        check_survivor(image, secrets, "change", f"run {run}")


def test_a_stale_luks2_copy_is_repaired_before_the_next_change(templates, tmp_path):
    """A change killed between its two header copies leaves the secondary copy stale, naming
    the old key slot area.  The next command must not let a crash of its own fall back to
    that copy after reusing the area (cryptfs rewrites the stale copy first)."""
    images, secrets = templates
    image, crashed = tmp_path / "image", tmp_path / "crashed"
    shutil.copyfile(images["luks2"], crashed)
    assert run_killed_at(argv(crashed, "change", secrets), 3) == -1     # 3: the secondary
    assert cryptfs_opens(crashed, secrets) == {"p0", "p2"}
    add = ["luksAddKey", str(image), str(secrets["p3"]), "-d", str(secrets["p0"]), *CHEAP]
    shutil.copyfile(crashed, image)
    writes = run_killed_at(add, 0)
    for write in range(1, writes + 1):
        for sectors in (0, 2):
            shutil.copyfile(crashed, image)
            assert run_killed_at(add, write, sectors) == -1
            opened = cryptfs_opens(image, secrets)
            assert opened in ({"p0", "p2"}, {"p0", "p2", "p3"}), f"write {write}: {opened}"
            assert cryptsetup_opens(image, secrets) == opened
