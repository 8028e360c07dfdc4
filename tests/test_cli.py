"""Bad input: one line on stderr, the documented exit code, no traceback, image untouched."""

import json

import pytest

from cryptfs.mounts import mount_type
from helpers import cryptfs, mounted, needs_fuse, sha256


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
    (["--cipher", "serpent-xts-plain64"], None, 1, "cipher 'serpent' in 'serpent-xts-plain64' "
                                                   "is not supported (supported: aes)"),
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
