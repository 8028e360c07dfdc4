"""Multi data unit: the multidu backend (the native core) against per-unit
AES, the convert loop's path choice and failure semantics, and byte-identical ciphertext
across every path."""

import logging
import random

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptfs import backends
from cryptfs.backends import native
from cryptfs.backends.base import CryptoRequest, Op
from cryptfs.backends.multidu import MultiDuBackend
from cryptfs.backends.software import SoftwareBackend
from cryptfs.core.convert import Converter, choose_path
from cryptfs.core.geometry import Geometry
from cryptfs.core.stats import Stats
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.spec import parse_spec
from cryptfs.tools import verify
from helpers import open_plain

COUNTER_MODES = {"plain", "plain64", "plain64be"}


def reference(spec, key: bytes, op: Op, data: bytes, du: int, first: int, step: int) -> bytes:
    """Unit by unit with pyca/cryptography and dm-crypt IVs: what the kernel computes."""
    ivgen = IV_MODES[spec.ivmode].generator(key, spec.ivopts)
    out = bytearray()
    for i in range(len(data) // du):
        iv = ivgen(first + i * step)
        mode = modes.XTS(iv) if spec.mode == "xts" else modes.CBC(iv)
        cipher = Cipher(algorithms.AES(key), mode)
        ctx = cipher.encryptor() if op is Op.ENCRYPT else cipher.decryptor()
        out += ctx.update(data[i * du:(i + 1) * du])
    return bytes(out)


def request_iv(spec, key, first: int) -> bytes:
    """What the convert loop hands multidu: the IV for counter modes, else the plain64 counter."""
    mode = spec.ivmode if spec.ivmode in COUNTER_MODES else "plain64"
    return IV_MODES[mode].generator(key, spec.ivopts)(first)


pytestmark = pytest.mark.skipif(native.UNAVAILABLE, reason=str(native.UNAVAILABLE))


@pytest.mark.parametrize("cipher", verify.CIPHERS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_multidu_matches_per_unit_aes(cipher, data):
    spec = parse_spec(cipher)
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    key = rng.randbytes(spec.default_key_bits // 8)
    du = data.draw(st.sampled_from([512, 1024, 2048, 4096]))
    n = data.draw(st.integers(1, 40))
    step = data.draw(st.sampled_from([1, du // 512]))
    first = data.draw(st.integers(0, 2**40)) if spec.ivmode != "plain" else \
        data.draw(st.integers(0, 2**32 - 1 - n * step))         # plain: no 32-bit wrap here
    op = data.draw(st.sampled_from(list(Op)))
    backend = MultiDuBackend(spec, bytearray(key))
    src = rng.randbytes(n * du)
    dst = bytearray(len(src))
    backend.submit(CryptoRequest(op, memoryview(src), memoryview(dst),
                                 request_iv(spec, key, first), du, step))
    assert bytes(dst) == reference(spec, key, op, src, du, first, step)


@pytest.mark.parametrize("cipher", ["aes-xts-plain64", "aes-cbc-essiv:sha256"])
@pytest.mark.parametrize("op", list(Op))
def test_a_one_mebibyte_bio_in_default_pieces_matches_per_unit_aes(cipher, op):
    spec = parse_spec(cipher)
    rng = random.Random(1)
    key = rng.randbytes(spec.default_key_bits // 8)
    src, dst = rng.randbytes((1 << 20) + 512), bytearray((1 << 20) + 512)
    MultiDuBackend(spec, bytearray(key)).submit(
        CryptoRequest(op, memoryview(src), memoryview(dst), request_iv(spec, key, 77), 512, 1))
    assert bytes(dst) == reference(spec, key, op, src, 512, 77, 1)


def test_caps_say_what_multidu_derives():
    caps = MultiDuBackend(parse_spec("aes-cbc-essiv:sha256"), bytearray(32)).caps
    assert caps.native_multi_du and {"essiv", "benbi", "null", "plain"} <= caps.derived_iv_modes
    software = SoftwareBackend(parse_spec("aes-xts-plain64"), bytearray(range(64)))
    assert not software.caps.native_multi_du


@pytest.mark.parametrize("cipher, backend, multi, fragment", [
    ("aes-xts-plain64", "software", True, "multi_du (auto-split): plain64 IVs as a little-endian"),
    ("aes-xts-plain64be", "multidu", True, "multi_du (native): plain64be IVs as a big-endian"),
    ("aes-cbc-essiv:sha256", "software", False, "IV mode essiv is no counter and backend "
                                                "software cannot derive it"),
    ("aes-cbc-essiv:sha256", "multidu", True, "essiv IVs as derived by the backend"),
    ("aes-cbc-plain", "software", True, "per-sector where plain wraps at 2^32"),
    ("aes-cbc-plain", "multidu", True, "wrapping at 2^32 (derived by the backend)"),
])
def test_path_choice_and_reason(cipher, backend, multi, fragment):
    spec = parse_spec(cipher)
    b = backends.create(backend, spec, bytearray(range(spec.default_key_bits // 8)))
    chosen, reason = choose_path("multi_du", spec, Geometry(4096, 0, 1 << 20), b)
    assert chosen is multi and fragment in reason
    assert "step 8" in reason if multi else True
    assert choose_path("per_sector", spec, Geometry(4096, 0, 1 << 20), b) == \
        (False, "per_sector requested")


async def test_backend_rejecting_the_unit_size_falls_back_and_opens(tmp_path, caplog):
    from cryptfs.core.config import load
    from cryptfs.core.volume import KeySource
    from cryptfs.fuse.daemon import Daemon
    from cryptfs.stack import assemble

    (tmp_path / "image").write_bytes(bytes(1 << 20))
    (tmp_path / "key").write_bytes(bytes(range(64)))
    (tmp_path / "c.toml").write_text(f"""
[device]
type = "plain"
[crypto]
key_file = "{tmp_path / 'key'}"
sector_size = 4096
[pipeline]
mode = "multi_du"
[backend]
name = "multidu"
[backend.multidu]
data_unit_sizes = [512]     # an engine that advertises multi-DU, but not of 4096 bytes
""")
    config = load(str(tmp_path / "c.toml"))
    with caplog.at_level(logging.WARNING):
        daemon = Daemon(assemble(str(tmp_path / "image"), config,
                                 KeySource(config.crypto.key_file)))
    assert "advertises multi data unit requests but not of 4096 bytes" in caplog.text
    status = daemon.status()
    assert status["crypto_path"] == "per_sector"
    assert "rejects data unit size 4096 (512)" in status["crypto_path_reason"]
    data = random.randbytes(40000)
    assert await daemon.queue.write(5000, data) == len(data)       # and the device works
    assert bytes(await daemon.queue.read(5000, len(data))) == data
    daemon.close()


class RunsOutOfMemory(MultiDuBackend):
    """Every multi data unit request fails for lack of memory; counts what it was given."""

    def __init__(self, *args):
        super().__init__(*args)
        self.multi_requests = 0

    def submit(self, req):
        if req.n_units > 1:
            self.multi_requests += 1
            raise MemoryError
        return super().submit(req)


@pytest.mark.parametrize("op", list(Op))
def test_memory_pressure_retries_per_sector_once_and_terminates(op):
    spec, key = parse_spec("aes-xts-plain64"), bytes(range(64))
    backend = RunsOutOfMemory(spec, bytearray(key))
    stats = Stats()
    conv = Converter(backend, SoftwareBackend(spec, key), spec, key, Geometry(512, 0, 1 << 20),
                     stats, mode="multi_du")
    data = random.randbytes(64 * 512)
    out = bytearray(len(data))
    for bio in range(10):
        conv.convert(op, bio * 64, memoryview(data), memoryview(out))
        assert bytes(out) == reference(spec, key, op, data, 512, bio * 64, 1)
    assert backend.multi_requests == 10            # one multi-DU attempt per bio, never again
    assert stats.snapshot()["multi_du_retried_bios"] == 10
    assert "retries" not in stats.snapshot()       # the per-sector retry itself succeeded


async def test_injected_allocation_failure_goes_per_sector(tmp_path):
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    daemon = open_plain(image, bytes(range(64)), backend="multidu", mode="multi_du",
                        inject_alloc_failure=1.0)
    data = random.randbytes(300000)
    before = daemon.stack.backend.statistics()              # (the self-test's requests)
    assert await daemon.queue.write(1000, data) == len(data)
    assert bytes(await daemon.queue.read(1000, len(data))) == data
    counters = daemon.stack.stats.snapshot()
    assert counters["multi_du_alloc_failures"] >= 2
    after = daemon.stack.backend.statistics()
    assert after["requests"] - before["requests"] == \
        after["data_units"] - before["data_units"]          # nothing went multi-DU
    daemon.close()


@pytest.mark.parametrize("backend, options, per_sector", [
    ("software", {}, True),                     # the 128-bit auto-splitter would carry
    ("multidu", {}, False),                     # the native core derives plain's wrap
])
def test_plain_iv_wrap_matches_dm_crypt(backend, options, per_sector):
    spec, key = parse_spec("aes-cbc-plain"), bytes(range(32))
    stats = Stats()
    geometry = Geometry(512, 0, 1 << 20, iv_offset=2**32 - 5)
    conv = Converter(backends.create(backend, spec, bytearray(key)),
                     SoftwareBackend(spec, key), spec, key, geometry, stats, mode="multi_du")
    data = random.randbytes(16 * 512)
    out = bytearray(len(data))
    conv.convert(Op.ENCRYPT, 0, memoryview(data), memoryview(out))   # crosses 2^32
    assert bytes(out) == reference(spec, key, Op.ENCRYPT, data, 512, 2**32 - 5, 1)
    conv.convert(Op.ENCRYPT, 100, memoryview(data), memoryview(out))  # past it: multi-DU
    assert bytes(out) == reference(spec, key, Op.ENCRYPT, data, 512, 2**32 + 95, 1)
    assert stats.snapshot().get("plain_wrap_per_sector", 0) == (1 if per_sector else 0)


@pytest.mark.slow
def test_verify_finds_every_path_identical_and_catches_a_broken_one(monkeypatch):
    names = sorted(backends.REGISTRY)
    runs = verify.verify(1 << 20, 7, names)
    labels = {label for label, _, _ in verify.paths(names)}
    assert labels == {*names, "engine-c"}          # the engine's Python and C models
    assert len(runs) == len(verify.CIPHERS) * 3 * len(labels) * 2
    assert {run.backend for run in runs} == labels
    assert verify.mismatches(runs) == []
    assert all(run.reads_ok for run in runs)
    assert any("native" in run.path for run in runs) and any("auto-split" in run.path
                                                            for run in runs)
    # a backend whose second data unit of a bio is off by one IV must be caught
    real = MultiDuBackend.submit

    def off_by_one(self, req):
        status = real(self, req)
        if req.n_units > 1:
            unit = req.data_unit_size
            shifted = CryptoRequest(req.op, req.src[unit:2 * unit], req.dst[unit:2 * unit],
                                    req.iv, unit, req.iv_step)
            real(self, shifted)
        return status
    monkeypatch.setattr(MultiDuBackend, "submit", off_by_one)
    monkeypatch.setattr("cryptfs.core.selftest.check", lambda *args: None)
    runs = verify.verify(1 << 20, 7, ["software", "multidu"], ciphers=("aes-xts-plain64",),
                         layouts=((512, False),))
    assert [(r.backend, r.mode) for r in verify.mismatches(runs)] == [("multidu", "multi_du")]
    assert "✗" in verify.table(runs, ["software", "multidu"])


def test_a_wrong_core_is_refused_by_the_self_test_at_open(tmp_path, monkeypatch, caplog):
    """The C core's IV table is checked against the Python one when a device opens: a core
    that derives a wrong IV serves nothing; software does, and status says why."""
    real = MultiDuBackend.submit

    def wrong_iv(self, req):
        iv = bytearray(req.iv)
        iv[0] ^= 1
        req.iv = bytes(iv)
        return real(self, req)
    monkeypatch.setattr(MultiDuBackend, "submit", wrong_iv)
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    with caplog.at_level(logging.WARNING):
        daemon = open_plain(image, bytes(range(64)), backend="multidu", mode="multi_du")
    try:
        assert daemon.stack.backend.name == "software"
        assert "self-test" in daemon.status()["backend_refused"]
        assert "failed its self-test" in caplog.text
    finally:
        daemon.close()
