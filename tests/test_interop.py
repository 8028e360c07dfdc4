"""Byte compatibility with the real tools, both directions, without FUSE.

qemu-img makes LUKS1 images from known plaintext; cryptfs opens them in *plain* mode with the
volume key cryptsetup dumps and the payload offset, reads back the plaintext, writes at
unaligned offsets, and qemu-img decrypts the result.  cryptsetup's offline reencryption does the
same for LUKS2 with 512- and 4096-byte sectors (whose IVs still count 512-byte sectors).
"""

import random
import subprocess

import pytest

from helpers import (
    PASSPHRASE,
    luks_volume_key,
    needs,
    open_plain,
    qemu_luks_decrypt,
    qemu_luks_encrypt,
    read_then_patch,
)

SIZE = 2 * 1024 * 1024

QEMU_MATRIX = [
    # (qemu cipher-alg, cipher-mode, ivgen-alg, ivgen-hash) → dm-crypt spec, key bits
    ("aes-256", "xts", "plain64", None, "aes-xts-plain64", 512),
    ("aes-256", "cbc", "essiv", "sha256", "aes-cbc-essiv:sha256", 256),
    ("aes-128", "cbc", "plain", None, "aes-cbc-plain", 128),
]   # the LUKS tests (test_luks.py) open the whole qemu matrix with passphrases


@needs("qemu-img", "cryptsetup")
@pytest.mark.parametrize("alg, mode, ivgen, ivhash, spec, bits", QEMU_MATRIX,
                         ids=[f"{m[0]}-{m[1]}-{m[2]}" for m in QEMU_MATRIX])
async def test_qemu_luks1_in_plain_mode_both_directions(tmp_path, interop_path, alg, mode,
                                                        ivgen, ivhash, spec, bits):
    plain = tmp_path / "plain.raw"
    plain.write_bytes(random.Random(bits).randbytes(SIZE))
    image = tmp_path / "image.luks"
    qemu_luks_encrypt(plain, image, cipher_alg=alg, cipher_mode=mode, ivgen_alg=ivgen,
                      ivgen_hash=ivhash)
    key, offset = luks_volume_key(image)
    assert len(key) * 8 == bits
    daemon = open_plain(image, key, cipher=spec, offset=offset, **interop_path)
    model = await read_then_patch(daemon, plain.read_bytes(), seed=bits)
    assert qemu_luks_decrypt(image, tmp_path / "out.raw") == model


def cryptsetup_reencrypt(*args: str) -> None:
    subprocess.run(["cryptsetup", "reencrypt", "--batch-mode", "--key-file", "-", *args],
                   input=PASSPHRASE.encode(), check=True, capture_output=True)


@needs("cryptsetup")
@pytest.mark.parametrize("sector_size", [512, 4096])
async def test_cryptsetup_luks2_detached_in_plain_mode_both_directions(tmp_path, interop_path,
                                                                      sector_size):
    data = tmp_path / "data.img"
    plaintext = random.Random(sector_size).randbytes(SIZE)
    data.write_bytes(plaintext)
    header = tmp_path / "header"
    cryptsetup_reencrypt("--encrypt", "--type", "luks2", "--header", str(header),
                         "--sector-size", str(sector_size), "--pbkdf", "pbkdf2",
                         "--pbkdf-force-iterations", "1000", str(data))
    key, offset = luks_volume_key(data, header=header)
    assert offset == 0
    daemon = open_plain(data, key, cipher="aes-xts-plain64", sector_size=sector_size,
                        **interop_path)
    model = await read_then_patch(daemon, plaintext, seed=sector_size)
    cryptsetup_reencrypt("--decrypt", "--header", str(header), "--force-offline-reencrypt",
                         str(data))
    assert data.read_bytes() == model
