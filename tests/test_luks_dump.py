"""``cryptfs dump`` against ``cryptsetup luksDump``, byte for byte, on images both tools and
qemu-img made — key slots of every KDF, tokens, labels, flags, requirements, several digests —
with and without ``--dump-volume-key``; and no traceback when the reader closes the pipe."""

import json
import subprocess
import sys

import pytest

from helpers import PASSPHRASE, ROOT, cryptfs, cryptsetup, needs, qemu_luks_encrypt
from luks_corpus import edit_json

FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
ARGON = ["--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768"]


def same_dump(image, *extra):
    """cryptfs dump and cryptsetup luksDump print the same bytes."""
    ours = cryptfs("dump", image, *extra)
    theirs = subprocess.run(["cryptsetup", "luksDump", *extra, str(image)], capture_output=True,
                            text=True)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout


def luks_format(image, *options, size=20 << 20):
    image.write_bytes(b"")
    with open(image, "r+b") as f:
        f.truncate(size)
    cryptsetup("luksFormat", *options, str(image))


@needs("cryptsetup")
@pytest.mark.parametrize("options", [
    ["--type", "luks1", "--pbkdf-force-iterations", "1000"],
    ["--type", "luks1", "--pbkdf-force-iterations", "1000", "--cipher", "aes-cbc-essiv:sha256",
     "--key-size", "256", "--hash", "sha512"],
    ["--type", "luks2", *FAST],
    ["--type", "luks2", *ARGON, "--sector-size", "512", "--label", "data", "--subsystem", "s1"],
    ["--type", "luks2", *FAST, "--luks2-metadata-size", "4M", "--luks2-keyslots-size", "2M",
     "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256"],
], ids=["luks1", "luks1-cbc-sha512", "luks2", "luks2-argon2id-label", "luks2-4M-metadata"])
def test_cryptsetup_images(tmp_path, options):
    image = tmp_path / "image"
    luks_format(image, *options)
    same_dump(image)


@needs("cryptsetup")
def test_luks2_with_slots_tokens_flags_and_requirements(tmp_path):
    image = tmp_path / "image"
    luks_format(image, "--type", "luks2", *FAST)
    new_key = tmp_path / "key2"
    new_key.write_text("second passphrase")
    cryptsetup("luksAddKey", *ARGON, "--pbkdf", "argon2i", str(image), str(new_key))
    cryptsetup("config", "--priority", "prefer", "--key-slot", "1", str(image), passphrase=None)
    cryptsetup("config", "--priority", "ignore", "--key-slot", "0", str(image), passphrase=None)
    cryptsetup("token", "add", "--key-description", "cryptfs:test", "--key-slot", "1",
               str(image), passphrase=None)
    token = tmp_path / "token.json"
    token.write_text(json.dumps({"type": "example-token", "keyslots": ["0", "1"], "x": [1]}))
    cryptsetup("token", "import", "--json-file", str(token), str(image), passphrase=None)
    same_dump(image)
    area = bytearray(image.read_bytes())

    def change(meta):
        meta["config"]["flags"] = ["allow-discards", "no-read-workqueue"]
        meta["config"]["requirements"] = {"mandatory": ["some-future-feature"]}
        meta["segments"]["0"]["flags"] = ["re-encrypted", "x"]
        meta["keyslots"]["2"] = {"type": "future", "key_size": 32,
                                 "area": {"type": "other", "offset": "1048576", "size": "4096"}}
        meta["digests"]["1"] = {"type": "pbkdf2", "keyslots": [], "segments": ["0"],
                                "hash": "sha1", "iterations": -5, "salt": "no base64",
                                "digest": "AAAA"}
    edit_json(area, change)
    image.write_bytes(area)
    same_dump(image)


@needs("cryptsetup", "qemu-img")
def test_qemu_img_luks1(tmp_path):
    plain, image = tmp_path / "plain", tmp_path / "image"
    plain.write_bytes(bytes(1 << 20))
    qemu_luks_encrypt(plain, image, cipher_alg="aes-128", cipher_mode="cbc", ivgen_alg="essiv",
                      ivgen_hash="sha256")
    same_dump(image)


@needs("cryptsetup")
@pytest.mark.parametrize("kind, options", [
    ("luks1", []), ("luks2", []), ("luks2", ["--pbkdf", "argon2i", "--pbkdf-memory", "32768"])])
def test_cryptfs_format_images_and_the_volume_key(tmp_path, kind, options):
    image = tmp_path / "image"
    force = "4" if options else "1000"
    result = cryptfs("format", image, "--type", kind, "--size", "20M", "--key-file", "-",
                     *(options or FAST), "--pbkdf-force-iterations", force,
                     input=PASSPHRASE.encode())
    assert result.returncode == 0, result.stderr
    same_dump(image)
    ours = cryptfs("dump", image, "--dump-volume-key", "--key-file", "-",
                   input=PASSPHRASE.encode())
    assert "WARNING" in ours.stderr
    theirs = cryptsetup("luksDump", "--dump-volume-key", str(image))
    assert ours.stdout == theirs


@needs("cryptsetup")
def test_detached_header(tmp_path):
    image, header = tmp_path / "data", tmp_path / "header"
    image.write_bytes(bytes(1 << 20))
    result = cryptfs("format", image, "--header", header, *FAST, "--key-file", "-",
                     input=PASSPHRASE.encode())
    assert result.returncode == 0, result.stderr
    ours = cryptfs("dump", image, "--header", header)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == cryptsetup("luksDump", str(header), passphrase=None)


def test_closed_pipe_ends_quietly(tmp_path):
    image = tmp_path / "image"
    result = cryptfs("format", image, "--size", "17M", "--key-file", "-", *FAST,
                     input=PASSPHRASE.encode())
    assert result.returncode == 0, result.stderr
    proc = subprocess.Popen([sys.executable, "-m", "cryptfs", "dump", "--dump-volume-key",
                             "--key-file", "-", str(image)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                       # the reader is gone before anything is written
    _, err = proc.communicate(PASSPHRASE.encode(), timeout=60)
    assert "Traceback" not in err.decode() and "BrokenPipe" not in err.decode(), err
    assert proc.returncode == 141
