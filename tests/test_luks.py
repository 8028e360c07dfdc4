"""LUKS1 and LUKS2 against the real tools, both directions.

* qemu-img LUKS1 images (aes-128/256 × xts/cbc × plain/plain64/essiv) and cryptsetup
  luksFormat LUKS1 images open with their passphrase; what cryptfs writes reads back in qemu-img.
* cryptsetup reencrypt makes LUKS2 from known plaintext (pbkdf2/argon2id × 512/4096-byte sectors
  × embedded/detached header); cryptfs reads the plaintext; with a detached header, what cryptfs
  writes decrypts back with cryptsetup reencrypt --decrypt.
* cryptfs format makes images cryptsetup luksDump and open --test-passphrase accept, with the
  volume key cryptsetup dumps, and (LUKS1) that qemu-img reads.
"""

import random

import pytest

from helpers import (
    PASSPHRASE,
    cryptfs,
    cryptsetup,
    luks_volume_key,
    needs,
    open_luks,
    qemu_luks_decrypt,
    qemu_luks_encrypt,
    read_then_patch,
    reencrypt_luks2,
)

SIZE = 2 << 20

QEMU_MATRIX = [
    ("aes-256", "xts", "plain64", None),
    ("aes-128", "xts", "plain64", None),
    ("aes-256", "xts", "plain", None),
    ("aes-256", "cbc", "essiv", "sha256"),
    ("aes-128", "cbc", "essiv", "sha256"),
    ("aes-128", "cbc", "plain64", None),
    ("aes-256", "cbc", "plain", None),
]


@needs("qemu-img")
@pytest.mark.parametrize("alg, mode, ivgen, ivhash", QEMU_MATRIX,
                         ids=[f"{m[0]}-{m[1]}-{m[2]}" for m in QEMU_MATRIX])
async def test_qemu_luks1_opens_with_its_passphrase(tmp_path, interop_path, alg, mode, ivgen,
                                                    ivhash):
    plain = tmp_path / "plain.raw"
    plain.write_bytes(random.Random(alg + mode).randbytes(SIZE))
    image = tmp_path / "image.luks"
    qemu_luks_encrypt(plain, image, cipher_alg=alg, cipher_mode=mode, ivgen_alg=ivgen,
                      ivgen_hash=ivhash)
    daemon = open_luks(image, **interop_path)
    assert daemon.stack.volume.kind == "luks1"
    model = await read_then_patch(daemon, plain.read_bytes(), seed=1)
    assert qemu_luks_decrypt(image, tmp_path / "out.raw") == model


@needs("qemu-img")
@pytest.mark.parametrize("hash_alg", ["sha1", "sha512", "ripemd160"])
async def test_qemu_luks1_header_hashes(tmp_path, hash_alg):
    plain = tmp_path / "plain.raw"
    plain.write_bytes(random.Random(hash_alg).randbytes(1 << 20))
    image = tmp_path / "image.luks"
    qemu_luks_encrypt(plain, image, hash_alg=hash_alg)
    daemon = open_luks(image)
    assert bytes(await daemon.queue.read(0, 1 << 20)) == plain.read_bytes()
    daemon.close()


@needs("cryptsetup", "qemu-img")
@pytest.mark.parametrize("cipher, bits", [("aes-xts-plain64", 512), ("aes-cbc-essiv:sha256", 256)])
async def test_cryptsetup_luks1_key_and_data(tmp_path, cipher, bits):
    image = tmp_path / "image"
    image.write_bytes(bytes(4 << 20))
    cryptsetup("luksFormat", "--type", "luks1", "--cipher", cipher, "--key-size", str(bits),
               "--pbkdf-force-iterations", "1000", str(image))
    daemon = open_luks(image)
    assert bytes(daemon.stack.volume.key.buffer) == luks_volume_key(image)[0]
    size = daemon.device.size
    data = random.Random(3).randbytes(size)
    assert await daemon.queue.write(0, data) == size
    daemon.close()
    assert qemu_luks_decrypt(image, tmp_path / "out.raw") == data


@needs("cryptsetup")
@pytest.mark.parametrize("detached", [False, True], ids=["embedded", "detached"])
@pytest.mark.parametrize("sector_size", [512, 4096])
@pytest.mark.parametrize("pbkdf", ["pbkdf2", "argon2id"])
async def test_cryptsetup_luks2_reads_back_and_decrypts(tmp_path, interop_path, pbkdf,
                                                        sector_size, detached):
    plaintext = random.Random(sector_size).randbytes(SIZE)
    image, header = reencrypt_luks2(tmp_path, plaintext, sector_size, pbkdf, detached)
    daemon = open_luks(image, header=header, **interop_path)
    assert daemon.stack.volume.kind == "luks2"
    assert daemon.stack.volume.geometry.sector_size == sector_size
    if not detached:
        assert bytes(await daemon.queue.read(0, SIZE)) == plaintext
        daemon.close()
        return
    model = await read_then_patch(daemon, plaintext, seed=sector_size)
    cryptsetup("reencrypt", "--decrypt", "--header", str(header), "--force-offline-reencrypt",
               str(image))
    assert image.read_bytes() == model


FORMATS = [
    ("luks2", ["--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4"]),
    ("luks2", ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--sector-size", "4096"]),
    ("luks2", ["--pbkdf", "argon2i", "--pbkdf-memory", "32768", "--pbkdf-force-iterations", "4",
               "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256"]),
    ("luks1", ["--pbkdf-force-iterations", "1000"]),
    ("luks1", ["--pbkdf-force-iterations", "1000", "--cipher", "aes-cbc-essiv:sha256",
               "--key-size", "128", "--hash", "sha512"]),
]


@needs("cryptsetup", "qemu-img")
@pytest.mark.parametrize("kind, options", FORMATS, ids=[" ".join([f[0]] + f[1][:2] + f[1][-2:])
                                                        for f in FORMATS])
async def test_cryptfs_format_is_accepted_by_cryptsetup_and_qemu(tmp_path, kind, options):
    image = tmp_path / "image"
    result = cryptfs("format", image, "--type", kind, "--size", "20M", "--key-file", "-",
                     *options, input=PASSPHRASE.encode())
    assert result.returncode == 0, result.stderr
    dump = cryptsetup("luksDump", str(image), passphrase=None)
    assert f"Version:       \t{kind[-1]}" in dump
    cryptsetup("open", "--test-passphrase", str(image))
    daemon = open_luks(image)
    assert bytes(daemon.stack.volume.key.buffer) == luks_volume_key(image)[0]     # cryptsetup reads
                                                                           # an open image
    data = random.Random(4).randbytes(daemon.device.size)
    assert await daemon.queue.write(0, data) == len(data)
    daemon.close()
    if kind == "luks1":
        assert qemu_luks_decrypt(image, tmp_path / "out.raw") == data


@needs("cryptsetup")
async def test_cryptfs_format_detached_header_decrypts_with_cryptsetup(tmp_path):
    image, header = tmp_path / "data", tmp_path / "header"
    image.write_bytes(bytes(SIZE))
    before = image.read_bytes()
    result = cryptfs("format", image, "--header", header, "--pbkdf", "pbkdf2",
                     "--pbkdf-force-iterations", "1000", "--key-file", "-",
                     input=PASSPHRASE.encode())
    assert result.returncode == 0, result.stderr
    assert image.read_bytes() == before            # a detached header leaves the data alone
    daemon = open_luks(image, header=header)
    data = random.Random(5).randbytes(SIZE)
    await daemon.queue.write(0, data)
    daemon.close()
    cryptsetup("reencrypt", "--decrypt", "--header", str(header), "--force-offline-reencrypt",
               str(image))
    assert image.read_bytes() == data
