"""Bad input: one line on stderr, the documented exit code, no traceback, image untouched."""

import json
import os
import stat
import subprocess
import sys

import pytest

from cryptfs.cli.commands import default_log_file
from cryptfs.fuse.mounts import mount_type
from helpers import ROOT, cryptfs, force_unmount, mounted, needs_fuse, sha256


@pytest.fixture
def setup(tmp_path):
    image, key, mnt = tmp_path / "image", tmp_path / "key", tmp_path / "mnt"
    image.write_bytes(bytes(range(256)) * 4096)       # 1 MiB
    key.write_bytes(bytes(range(64)))
    mnt.mkdir()
    return image, key, mnt


def refused(result, code: int, message: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cryptfs: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr


BAD = [
    # (extra arguments, config text, exit code, message fragment)
    (["--key-size", "384"], None, 1, "key size 384 bits is not valid for aes-xts-plain64 "
                                     "(allowed: 256, 512)"),
    (["--cipher", "des3_ede-xts-plain64"], None, 1, "cipher 'des3_ede' in "
                                                    "'des3_ede-xts-plain64' is not supported "
                                                    "(supported: aes, serpent"),
    (["--cipher", "aes-xts-lmk"], None, 1, "IV mode 'lmk'"),
    ([], "[crypto]\nkeysize = 512\n", 1, "config: unknown key [crypto] keysize"),
    ([], "[pipeline]\nqueue_depth = -1\n", 1, "config: [pipeline] queue_depth must be between"),
    (["--sector-size", "1000"], None, 1, "--sector-size must be a power of two"),
    (["--offset", "4096"], None, 4, "offset 4096 sectors (2097152 bytes) is at or beyond the end "
                                    "of the image"),
    (["--offset", "3", "--sector-size", "4096"], None, 1, "offset 3 is not aligned"),
    (["--backend", "gpu"], None, 1, "unknown backend 'gpu' (known: software"),
    (["--key-size", "256", "--cipher", "aes-cbc-essiv:sha256", "--key-file", "SHORT"], None, 2,
     "holds 3 bytes but a 256-bit key needs 32"),
]


@pytest.mark.parametrize("extra, config, code, message", BAD,
                         ids=[b[3][:30] for b in BAD])
def test_bad_options(setup, extra, config, code, message):
    image, key, mnt = setup
    before = sha256(image)
    args = ["open", image, mnt, "--type", "plain"]
    if "--key-file" in extra:
        short = image.parent / "short"
        short.write_bytes(b"abc")
        extra = [str(short) if a == "SHORT" else a for a in extra]
    else:
        args += ["--key-file", key]
    if config:
        (image.parent / "c.toml").write_text(config)
        args += ["--config", image.parent / "c.toml"]
    refused(cryptfs(*args, *extra), code, message)
    assert sha256(image) == before
    assert mount_type(str(mnt)) is None


def test_missing_image(setup):
    image, key, mnt = setup
    refused(cryptfs("open", image.parent / "nope", mnt, "--type", "plain", "--key-file", key), 4,
            "cannot open image")


def test_missing_mountpoint(setup):
    image, key, mnt = setup
    before = sha256(image)
    refused(cryptfs("open", image, image.parent / "nomnt", "--type", "plain", "--key-file", key), 4,
            "does not exist or is not a directory")
    assert sha256(image) == before


def test_passphrase_from_stdin_and_missing_passphrase(setup):
    image, key, mnt = setup
    refused(cryptfs("open", image, mnt, "--type", "plain", input=b""), 2, "no passphrase given")


def test_close_and_status_on_something_not_mounted(setup):
    _, _, mnt = setup
    refused(cryptfs("close", mnt), 4, "is not mounted")
    refused(cryptfs("status", mnt), 4, "is not mounted")


@needs_fuse
def test_busy_mountpoint_and_locked_image(setup, tmp_path):
    image, key, mnt = setup
    other = tmp_path / "other"
    other.write_bytes(bytes(1 << 20))
    with mounted(image, mnt, "--type", "plain", "--key-file", key):
        before = sha256(image)
        refused(cryptfs("open", other, mnt, "--type", "plain",
                "--key-file", key), 5, "is busy: something is "
                                                                    "mounted there already")
        mnt2 = tmp_path / "mnt2"
        mnt2.mkdir()
        pid = json.loads((mnt / "stats").read_text())["pid"]
        refused(cryptfs("open", image, mnt2, "--type", "plain", "--key-file", key), 5,
                f"image {image} is in use: open in cryptfs at {mnt} (pid {pid})")
        assert mount_type(str(mnt2)) is None
    assert sha256(image) == before


FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


@pytest.fixture
def luks(tmp_path):
    """A LUKS2 image made by cryptfs, its passphrase file and a mountpoint."""
    image, key, mnt = tmp_path / "luks.img", tmp_path / "pass", tmp_path / "mnt"
    key.write_text("cli test passphrase")
    cryptfs("format", image, "--size", "17M", "-d", key, *FAST, check=True)
    mnt.mkdir(exist_ok=True)
    return image, key, mnt


@pytest.mark.parametrize("extra, config, message", [
    (["--backend", "gpu"], None, "unknown backend 'gpu' (known: software"),
    ([], "[backend]\nname = 'engine'\n[backend.engine]\nchannels = 0\n",
     "config: [backend.engine] channels must be"),
    (["--set", "pipeline.queue_depth=0"], None, "queue_depth must be between 1 and 4096"),
    (["--cipher", "aes-cbc-plain"], None, "--cipher applies to plain mode"),
])
def test_checked_before_the_passphrase_is_asked(luks, extra, config, message):
    image, _, mnt = luks
    if config:
        (image.parent / "c.toml").write_text(config)
        extra = extra + ["--config", image.parent / "c.toml"]
    # nothing on stdin: asking for the passphrase would fail with "no passphrase given"
    refused(cryptfs("open", image, mnt, *extra, input=b""), 1, message)


def test_each_command_has_its_own_usage(luks):
    image, _, mnt = luks
    for args in (["open", image, mnt, "--no-such-option"], ["luksKillSlot", image],
                 ["status", "--bogus"]):
        result = cryptfs(*args)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"usage: cryptfs {args[0]} "), result.stderr


def run_at_terminal(args, answers: list[str]) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal, typing ``answers`` at its prompts."""
    import pty
    import sys
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "cryptfs", *map(str, args)])
    output, pending, answered = b"", list(answers), 0
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        if pending and output[answered:].rstrip().endswith(b":"):    # a new prompt
            os.write(fd, pending.pop(0).encode() + b"\n")
            answered = len(output)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_three_tries_at_a_terminal(luks):
    image, key, _ = luks
    right = key.read_text()
    code, out = run_at_terminal(["open", image, "--test-passphrase"], ["no", "nope", right])
    assert code == 0, out
    assert out.count("No key available with this passphrase.") == 2
    code, out = run_at_terminal(["open", image, "--test-passphrase"], ["a", "b", "c"])
    assert code == 2 and out.count("No key available with this passphrase.") == 3, out
    code, out = run_at_terminal(["luksAddKey", image, "--tries", "1", *FAST], ["a"])
    assert code == 2 and out.count("Enter any existing passphrase:") == 1, out


@needs_fuse
def test_status_lists_and_close_all_in_a_private_mount_namespace(luks, tmp_path):
    """Two devices listed by ``status`` and closed by ``close --all`` — in a mount namespace
    of their own, where the cryptfs mounts of anything else on the machine are detached
    first, so that --all reaches only these two."""
    image, key, mnt = luks
    plain, raw, mnt2 = tmp_path / "plain.img", tmp_path / "raw.key", tmp_path / "mnt2"
    plain.write_bytes(bytes(1 << 20))
    raw.write_bytes(bytes(range(64)))
    mnt2.mkdir()
    cli = f"{sys.executable} -m cryptfs"
    script = f"""
        set -e
        for m in $(awk '$0 ~ / - fuse.cryptfs / {{print $5}}' /proc/self/mountinfo); do
            umount -l "$m"; done
        {cli} open {image} {mnt} -d {key}
        {cli} open {plain} {mnt2} --type plain -d {raw} --read-only --backend software
        {cli} status
        {cli} status --json
        {cli} status {mnt2}/device
        {cli} close --all
        {cli} status
    """
    # exports are not mounts: a runtime directory of its own keeps others' out of --all too
    env = dict(os.environ, CRYPTFS_RUNTIME_DIR=str(tmp_path / "run"))
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                             script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    table, listed = out.split("\n[", 1)[0], json.loads("[" + out.split("\n[", 1)[1]
                                                        .split("\n]\n", 1)[0] + "\n]")
    assert table.splitlines()[0].split() == ["MOUNTPOINT", "IMAGE", "TYPE", "PID", "BACKEND",
                                             "PLANE", "LOG"]
    assert {d["mountpoint"] for d in listed} == {str(mnt), str(mnt2)}
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    for d in listed:
        s = d["status"]
        assert rows[d["mountpoint"]][1:] == [
            s["image"], s["type"] + (",ro" if s["read_only"] else ""), str(s["pid"]),
            f"{s['backend']}/{s['crypto_path']}", s["plane"], default_log_file()]
    assert f"{mnt2}/device is active (read-only)." in out
    assert out.rstrip().endswith("no cryptfs device is open")


def test_close_and_status_take_the_device_path(luks):
    image, key, mnt = luks
    with mounted(image, mnt, "-d", key):
        assert "is active" in cryptfs("status", mnt / "device", check=True).stdout
        cryptfs("close", mnt / "device", check=True)
        assert mount_type(str(mnt)) is None
        cryptfs("open", image, mnt, "-d", key, check=True)     # for mounted() to close


@needs_fuse
def test_key_commands_refuse_while_open_and_name_the_holder(luks, tmp_path):
    image, key, mnt = luks
    other = tmp_path / "other"
    other.write_text("another passphrase")
    with mounted(image, mnt, "-d", key):
        before = sha256(image)
        pid = json.loads((mnt / "stats").read_text())["pid"]
        holder = f"open in cryptfs at {mnt} (pid {pid}); close it first"
        refused(cryptfs("luksAddKey", image, other, "-d", key, *FAST), 5, holder)
        refused(cryptfs("luksKillSlot", image, "0", "-q"), 5, holder)
        refused(cryptfs("format", image, "-q", "-d", key, *FAST), 5, holder)
        assert cryptfs("isLuks", image).returncode == 0           # reading is fine
        assert sha256(image) == before


@needs_fuse
def test_device_file_mode_mtime_and_foreground_readiness(luks):
    image, key, mnt = luks
    os.utime(image, (1_600_000_000, 1_600_000_000))
    with mounted(image, mnt, "-d", key, "--read-only"):
        st = os.stat(mnt / "device")
        assert stat.S_IMODE(st.st_mode) == 0o400
        assert st.st_mtime == 1_600_000_000
    daemon = subprocess.Popen([sys.executable, "-m", "cryptfs", "open", image, mnt, "-f",
                               "-d", key], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        line = daemon.stderr.readline()
        assert line.startswith(f"{mnt}/device is ready (pid {daemon.pid})"), line
        assert stat.S_IMODE(os.stat(mnt / "device").st_mode) == 0o600
        cryptfs("close", mnt, check=True)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            force_unmount(mnt)
