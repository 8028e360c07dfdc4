"""fio's crc32c verification through the mounted device for the ciphers beyond AES: serpent-xts,
twofish-cbc-essiv, camellia-xts, Adiantum and the null cipher, each a plain dm-crypt volume
(a raw key file, no key derivation) on the default backend and data plane.  fio writes
random blocks of 512 bytes to 64 KiB at unaligned offsets from two jobs, then reads every one
back and checks its checksum: a short run, the cipher paths' end-to-end check through the
kernel (the bytes themselves are proven against the oracles in tests/test_ciphers.py)."""

import json
import subprocess

import pytest

from helpers import mounted, needs, needs_fuse

pytestmark = needs_fuse

#: spec → key bits
CIPHERS = {"serpent-xts-plain64": 512, "twofish-cbc-essiv:sha256": 256,
           "camellia-xts-plain64": 512, "xchacha12,aes-adiantum-plain64": 256,
           "cipher_null": 0}


@needs("fio")
@pytest.mark.parametrize("text", CIPHERS)
def test_fio_verify_crc32c(tmp_path, text):
    image, key, mnt = tmp_path / "image", tmp_path / "key", tmp_path / "mnt"
    image.write_bytes(bytes(8 << 20))
    key.write_bytes(bytes(range(7, 71)))
    with mounted(image, mnt, "--type", "plain", "--cipher", text, "--key-size",
                 str(CIPHERS[text]), "--key-file", key):
        done = subprocess.run([
            "fio", "--name=verify", f"--filename={mnt}/device", "--rw=randwrite",
            "--bsrange=512-64k", "--bs_unaligned=1", "--numjobs=2", "--size=2M",
            "--offset_increment=4M", "--verify=crc32c", "--verify_fatal=1",
            "--do_verify=1", "--direct=1", "--ioengine=psync", "--group_reporting",
            "--output-format=json", "--verify_state_save=0"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr + done.stdout[-2000:]
        job = json.loads(done.stdout[done.stdout.index("{"):])["jobs"][0]
        assert job["error"] == 0
        assert job["write"]["io_bytes"] >= 0.9 * 2 * (2 << 20)
        assert job["read"]["io_bytes"] == job["write"]["io_bytes"]    # all read back
