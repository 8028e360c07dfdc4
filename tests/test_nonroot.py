"""cryptfs without root, where FUSE is allowed as a standard install allows it (/dev/fuse mode
0666, fusermount3 setuid): format, open, write, status, close, reopen and the Python API as
an unprivileged user — and a mount that cannot happen refused in one line naming the cause,
before any passphrase.

This machine's /dev/fuse is 0600 and its Python lives in root's private home, so the test
installs the package into a world-readable virtual environment on Debian's Python and opens
/dev/fuse to everyone for its duration (restored afterwards)."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import fresh_copy, needs, needs_fuse

pytestmark = [pytest.mark.slow, needs_fuse, needs("setpriv", "fusermount3")]

SYSTEM_PYTHON = "/usr/bin/python3"
USER = 65534         # nobody
PASSPHRASE = "a non-root passphrase"


@pytest.fixture(scope="module")
def install():
    """A world-readable venv on the system Python with cryptfs installed; skipped where
    this cannot be arranged."""
    if os.geteuid() != 0:
        pytest.skip("arranging an unprivileged user's FUSE access needs root")
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"no {SYSTEM_PYTHON} outside root's home")
    where = Path(tempfile.mkdtemp(prefix="cryptfs-nonroot-", dir="/tmp"))
    try:
        os.chmod(where, 0o755)
        (where / "src").mkdir()
        fresh_copy(where / "src")
        made = subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(where / "venv")],
                              capture_output=True, text=True)
        if made.returncode:
            pytest.skip(f"the system Python cannot make a venv: {made.stderr.strip()}")
        pip = subprocess.run([str(where / "venv/bin/pip"), "install", "-q",
                              str(where / "src")], capture_output=True, text=True)
        assert pip.returncode == 0, pip.stderr[-2000:]
        subprocess.run(["chmod", "-R", "a+rX", str(where)], check=True)
        home = where / "home"
        home.mkdir()
        os.chown(home, USER, USER)
        yield where / "venv/bin/cryptfs", home
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def fuse_for_everyone():
    """/dev/fuse as a standard install has it, for the test's duration."""
    mode = os.stat("/dev/fuse").st_mode & 0o777
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)


def as_user(home: Path, *command, input: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    return subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
                           *map(str, command)], env=env, cwd=home, input=input,
                          capture_output=True, text=True, timeout=120)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_everyday_flow_as_an_unprivileged_user(install, fuse_for_everyone):
    cryptfs, home = install
    image, mnt = home / "disk.img", home / "mnt"
    ok(as_user(home, "mkdir", mnt))
    fast = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    ok(as_user(home, cryptfs, "format", image, "--size", "20M", *fast,
               input=f"{PASSPHRASE}\n"))
    assert os.stat(image).st_uid == USER
    ok(as_user(home, cryptfs, "open", image, mnt, input=f"{PASSPHRASE}\n"))
    try:
        ok(as_user(home, "dd", "if=/etc/os-release", f"of={mnt}/device", "conv=notrunc",
                   "status=none"))
        status = ok(as_user(home, cryptfs, "status"))
        assert str(mnt) in status and str(image) in status
        ok(as_user(home, cryptfs, "status", mnt))
    finally:
        ok(as_user(home, cryptfs, "close", mnt))
    assert not os.path.ismount(mnt)
    ok(as_user(home, cryptfs, "open", image, mnt, "--read-only", input=f"{PASSPHRASE}\n"))
    try:
        expected = Path("/etc/os-release").read_bytes()
        shown = as_user(home, "head", "-c", str(len(expected)), f"{mnt}/device")
        assert ok(shown).encode() == expected
    finally:
        ok(as_user(home, cryptfs, "close", mnt))
    api = f"""
import cryptfs
with cryptfs.open_image({str(image)!r}, passphrase={PASSPHRASE!r}) as d:
    print(d.read(9).decode())
"""
    assert ok(as_user(home, cryptfs.parent / "python", "-c", api)).strip() == \
        Path("/etc/os-release").read_text()[:9]


def refused_before_the_passphrase(result: subprocess.CompletedProcess, fragment: str):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "passphrase" not in lines[0].lower()


def test_mounts_that_cannot_happen_are_one_line_before_the_passphrase(install,
                                                                      fuse_for_everyone):
    cryptfs, home = install
    image, mnt = home / "plain.img", home / "mnt2"
    ok(as_user(home, "truncate", "-s", "1M", image))
    ok(as_user(home, "mkdir", mnt))
    # stdin gives nothing: had a passphrase been asked for, the error would say so
    refused_before_the_passphrase(
        as_user(home, cryptfs, "open", image, mnt, "--type", "plain", "--allow-other"),
        "user_allow_other")
    locked = home / "locked"                # root's, empty: no write access for the user
    locked.mkdir()
    refused_before_the_passphrase(
        as_user(home, cryptfs, "open", image, locked, "--type", "plain"),
        "no write access to the mountpoint")
    os.chmod("/dev/fuse", 0o600)
    refused_before_the_passphrase(
        as_user(home, cryptfs, "open", image, mnt, "--type", "plain"),
        "no access to /dev/fuse")
