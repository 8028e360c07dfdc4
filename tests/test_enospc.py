"""A full disk under the image reaches the writer as ENOSPC — not EIO — and the device lives
on: the space that exists still takes writes, and reads still work."""

import errno
import os
import random

import pytest

from cryptfs.errors import DeviceError
from helpers import mounted, needs_fuse, open_plain

KEY = bytes(range(64))
#: a sparse image far larger than the 1 MiB tmpfs under it
IMAGE_SIZE = 8 << 20


def sparse_image(where):
    image = where / "image"
    with open(image, "wb") as f:
        f.truncate(IMAGE_SIZE)
    return image


async def test_a_full_disk_is_enospc_through_the_device(small_tmpfs):
    daemon = open_plain(sparse_image(small_tmpfs), KEY, backend="multidu", mode="multi_du")
    try:
        first = random.randbytes(64 << 10)
        assert await daemon.queue.write(0, first) == len(first)
        with pytest.raises(DeviceError) as failure:
            for at in range(1 << 20, IMAGE_SIZE, 256 << 10):
                await daemon.queue.write(at, random.randbytes(256 << 10))
        assert failure.value.errno == errno.ENOSPC
        assert bytes(await daemon.queue.read(0, len(first))) == first   # still serving
    finally:
        daemon.close()


@pytest.mark.fuse
@needs_fuse
def test_a_full_disk_is_enospc_through_fuse(small_tmpfs, tmp_path, plane):
    image, key = sparse_image(small_tmpfs), tmp_path / "key"
    key.write_bytes(KEY)
    with mounted(image, tmp_path / "mnt", "--type", "plain", "--key-file", key) as mnt:
        fd = os.open(mnt / "device", os.O_RDWR)
        try:
            first = random.randbytes(64 << 10)
            assert os.pwrite(fd, first, 0) == len(first)
            with pytest.raises(OSError) as failure:
                for at in range(1 << 20, IMAGE_SIZE, 256 << 10):
                    os.pwrite(fd, random.randbytes(256 << 10), at)
            assert failure.value.errno == errno.ENOSPC
            assert os.pread(fd, len(first), 0) == first                  # the daemon lives
        finally:
            os.close(fd)
