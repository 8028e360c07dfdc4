"""Fixtures shared by the tests (helpers live in helpers.py)."""

import pytest

from helpers import fuse_usable, have


def pytest_runtest_setup(item):
    """The lanes' skips in one place: ``fuse`` tests where FUSE is not usable, ``oracle``
    tests where a tool they name is missing."""
    if item.get_closest_marker("fuse") and fuse_usable():
        pytest.skip(fuse_usable())
    missing = [tool for mark in item.iter_markers("oracle") for tool in mark.args
               if not have(tool)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")

MODES = ("per_sector", "multi_du")
#: the backends that complete requests synchronously, as (name, [backend.<name>] options).
#: The asynchronous engine needs its own task running (test_engine.py and cryptfs verify cover
#: it, byte for byte).
SYNCHRONOUS = {"software": ("software", {}), "multidu": ("multidu", {})}


@pytest.fixture(params=SYNCHRONOUS)
def backend_variant(request) -> tuple[str, dict]:
    """Every synchronous backend (and implementation): (name, options)."""
    return SYNCHRONOUS[request.param]


@pytest.fixture(params=[(b, m) for b in SYNCHRONOUS for m in MODES],
                ids=[f"{b}-{m}" for b in SYNCHRONOUS for m in MODES])
def crypto_path(request) -> dict:
    """Every backend × convert mode, as settings for helpers.open_plain / open_luks."""
    variant, mode = request.param
    backend, options = SYNCHRONOUS[variant]
    return {"backend": backend, "backend_options": options, "mode": mode}


#: the paths the (slow) interop matrices against qemu-img and cryptsetup run over: today's
#: dm-crypt (software, per sector) and the default (native multi data unit).  Every
#: backend × mode is proven byte-identical to these by test_vectors and test_multidu's
#: cryptfs verify.
INTEROP = [("software", "per_sector"), ("multidu", "multi_du")]


@pytest.fixture(params=INTEROP, ids=[f"{b}-{m}" for b, m in INTEROP])
def interop_path(request) -> dict:
    variant, mode = request.param
    backend, options = SYNCHRONOUS[variant]
    return {"backend": backend, "backend_options": options, "mode": mode}


@pytest.fixture
def volume(tmp_path):
    """A 32 MiB zeroed image, a raw 512-bit key file (helpers.VOLUME_KEY), a mountpoint."""
    from helpers import VOLUME_KEY
    image, key = tmp_path / "image", tmp_path / "key"
    image.write_bytes(bytes(32 << 20))
    key.write_bytes(VOLUME_KEY)
    return image, key, tmp_path / "mnt"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (a disk that fills up); skipped where mounting one is not allowed."""
    import subprocess
    where = tmp_path / "tmpfs"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(params=["trio", "native"])
def plane(request):
    """Run the test over both data planes: ``cryptfs open`` (helpers.cryptfs) asks for it."""
    import helpers
    if request.param == "native":
        from cryptfs.fuse import native
        if native.UNAVAILABLE:
            pytest.skip(native.UNAVAILABLE)
    helpers.PLANE["value"] = request.param
    try:
        yield request.param
    finally:
        helpers.PLANE["value"] = None
