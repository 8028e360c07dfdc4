"""Fixtures shared by the tests (helpers live in helpers.py)."""

import pytest

from backends import REGISTRY


@pytest.fixture(params=sorted(REGISTRY))
def backend_name(request) -> str:
    """Every registered backend: the same vectors run over each."""
    return request.param
