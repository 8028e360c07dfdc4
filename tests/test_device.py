"""The block layer without FUSE: unaligned I/O against a model, concurrency, discard, limits.

Every check of ciphertext goes through an independent reference (AES-XTS written out per
sector in this file), never through cryptfs's own read path alone.
"""

import errno
import random

import pytest
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.errors import DeviceError
from helpers import open_plain

KEY = bytes(range(1, 65))


def reference_decrypt(ciphertext: bytes, sector_size: int, offset_units: int = 0) -> bytes:
    out = bytearray()
    for i in range(len(ciphertext) // sector_size):
        tweak = ((offset_units + i) * (sector_size // 512)).to_bytes(16, "little")
        out += Cipher(algorithms.AES(KEY), modes.XTS(tweak)).decryptor().update(
            ciphertext[i * sector_size:(i + 1) * sector_size])
    return bytes(out)


def open_daemon(tmp_path, size=1 << 20, sector_size=512, **settings):
    image = tmp_path / "image"
    if not image.exists():
        image.write_bytes(bytes(size))
    return open_plain(image, KEY, sector_size=sector_size, **settings)


@pytest.mark.parametrize("sector_size", [512, 4096])
@pytest.mark.parametrize("offload", [False, True])
async def test_random_unaligned_io_matches_a_model(tmp_path, sector_size, offload):
    d = open_daemon(tmp_path, size=256 * 1024, sector_size=sector_size,
                    no_read_workqueue=not offload, no_write_workqueue=not offload)
    model = bytearray(d.device.size)
    model[:] = reference_decrypt(bytes(d.device.size), sector_size)   # a zeroed image
    rng = random.Random(sector_size + offload)
    for _ in range(300):
        off = rng.randrange(d.device.size)
        length = rng.choice([1, 100, 511, 512, 513, 1536, 4095, 4096, 4097, 20000])
        if rng.random() < 0.5:
            data = rng.randbytes(length)
            written = await d.queue.write(off, data)
            assert written == min(length, d.device.size - off)
            model[off:off + written] = data[:written]
        else:
            got = await d.queue.read(off, length)
            assert bytes(got) == bytes(model[off:off + length])
    d.close()
    ciphertext = (tmp_path / "image").read_bytes()
    assert reference_decrypt(ciphertext, sector_size) == bytes(model)


@pytest.mark.parametrize("offload", [False, True])
async def test_concurrent_writes_sharing_edge_sectors_lose_nothing(tmp_path, offload):
    # 64 writers, each 700 bytes at 700*i: neighbours share a 512-byte sector, so a write that
    # read-modify-writes its edges without the range lock would undo its neighbour's bytes.
    d = open_daemon(tmp_path, size=64 * 1024, no_read_workqueue=not offload,
                    no_write_workqueue=not offload, queue_depth=16)
    chunks = [bytes([i + 1]) * 700 for i in range(64)]

    async def writer(i):
        await trio.sleep(random.random() / 1000)
        await d.queue.write(700 * i, chunks[i])

    async with trio.open_nursery() as nursery:
        for i in random.sample(range(64), 64):
            nursery.start_soon(writer, i)
    assert bytes(await d.queue.read(0, 700 * 64)) == b"".join(chunks)
    assert d.stack.stats.snapshot()["rmw"] == 64
    d.close()


async def test_discard_zeroes_ciphertext_of_whole_units_only(tmp_path):
    d = open_daemon(tmp_path, size=64 * 1024, allow_discards=True)
    await d.queue.write(0, b"\xab" * 8192)
    await d.queue.discard(100, 4000)         # whole sectors inside: 512..4095
    ciphertext = (tmp_path / "image").read_bytes()
    assert ciphertext[512:4096] == bytes(3584)
    assert ciphertext[:512] != bytes(512) and ciphertext[4096:4608] != bytes(512)
    plain = bytes(await d.queue.read(0, 8192))
    assert plain[:512] == b"\xab" * 512 and plain[4096:] == b"\xab" * 4096
    # dm-crypt semantics: a discarded sector reads as the decryption of zeros
    assert plain[512:4096] == reference_decrypt(bytes(3584), 512, offset_units=1)
    d.close()


async def test_discard_needs_allow_discards(tmp_path):
    d = open_daemon(tmp_path)
    with pytest.raises(DeviceError) as e:
        await d.queue.discard(0, 4096)
    assert e.value.errno == errno.EOPNOTSUPP
    d.close()


async def test_read_only_refuses_writes_and_leaves_the_image(tmp_path):
    (tmp_path / "image").write_bytes(random.randbytes(64 * 1024))
    before = (tmp_path / "image").read_bytes()
    d = open_daemon(tmp_path, read_only=True, allow_discards=True)
    for attempt in (d.queue.write(0, b"x"), d.queue.discard(0, 4096)):
        with pytest.raises(DeviceError) as e:
            await attempt
        assert e.value.errno == errno.EROFS
    assert len(await d.queue.read(0, 4096)) == 4096
    d.close()
    assert (tmp_path / "image").read_bytes() == before


async def test_the_end_of_the_device(tmp_path):
    d = open_daemon(tmp_path, size=8192)
    assert bytes(await d.queue.read(8192, 10)) == b""
    assert len(await d.queue.read(8000, 1000)) == 192
    assert await d.queue.write(8000, b"y" * 1000) == 192
    with pytest.raises(DeviceError) as e:
        await d.queue.write(8192, b"z")
    assert e.value.errno == errno.ENOSPC
    assert bytes(await d.queue.read(8000, 192)) == b"y" * 192
    d.close()


async def test_flush_reaches_the_image(tmp_path, monkeypatch):
    d = open_daemon(tmp_path)
    synced = []
    monkeypatch.setattr(d.stack.image, "sync", lambda: synced.append(True))
    await d.queue.write(0, b"data")
    await d.queue.flush()
    assert synced == [True]
    d.close()
