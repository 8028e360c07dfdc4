"""Fixtures shared by the tests (helpers live in helpers.py)."""

import pytest

from backends import REGISTRY

MODES = ("per_sector", "multi_du")
#: the backends that complete requests synchronously; the asynchronous engine needs its own
#: task running (test_engine.py and cryptfs verify cover it, byte for byte)
SYNCHRONOUS = sorted(name for name in REGISTRY if name != "engine")


@pytest.fixture(params=SYNCHRONOUS)
def backend_name(request) -> str:
    """Every registered backend: the same vectors run over each."""
    return request.param


@pytest.fixture(params=[(b, m) for b in SYNCHRONOUS for m in MODES],
                ids=[f"{b}-{m}" for b in SYNCHRONOUS for m in MODES])
def crypto_path(request) -> dict:
    """Every backend × convert mode, as settings for helpers.open_plain / open_luks."""
    backend, mode = request.param
    return {"backend": backend, "mode": mode}
