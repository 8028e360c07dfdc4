"""Fixtures shared by the tests (helpers live in helpers.py)."""

import pytest

MODES = ("per_sector", "multi_du")
#: the backends that complete requests synchronously, as (name, [backend.<name>] options): multidu
#: twice, on the native core and on its pure-Python path, so the same vectors run over both.
#: The asynchronous engine needs its own task running (test_engine.py and cryptfs verify cover
#: it, byte for byte).
SYNCHRONOUS = {"software": ("software", {}), "multidu": ("multidu", {}),
               "multidu-python": ("multidu", {"native": False})}


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
#: dm-crypt (software, per sector), the default (native multi data unit) and its pure-Python
#: fallback.  Every backend × mode is proven byte-identical to these by test_vectors and
#: test_multidu's cryptfs verify.
INTEROP = [("software", "per_sector"), ("multidu", "multi_du"), ("multidu-python", "multi_du")]


@pytest.fixture(params=INTEROP, ids=[f"{b}-{m}" for b, m in INTEROP])
def interop_path(request) -> dict:
    variant, mode = request.param
    backend, options = SYNCHRONOUS[variant]
    return {"backend": backend, "backend_options": options, "mode": mode}
