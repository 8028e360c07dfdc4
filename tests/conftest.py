"""Fixtures shared by the tests (helpers live in helpers.py)."""

import pytest

from backends import REGISTRY

MODES = ("per_sector", "multi_du")


@pytest.fixture(params=sorted(REGISTRY))
def backend_name(request) -> str:
    """Every registered backend: the same vectors run over each."""
    return request.param


@pytest.fixture(params=[(b, m) for b in sorted(REGISTRY) for m in MODES],
                ids=[f"{b}-{m}" for b in sorted(REGISTRY) for m in MODES])
def crypto_path(request) -> dict:
    """Every backend × convert mode, as settings for helpers.open_plain / open_luks."""
    backend, mode = request.param
    return {"backend": backend, "mode": mode}
