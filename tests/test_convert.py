"""The convert loop's contract with asynchronous backends: IN_PROGRESS, BUSY → RESTART,
errors, lost completions — checked against an independent per-sector AES-XTS computation."""

import errno
import random

import pytest
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.backends.aes import UnitCipher
from cryptfs.backends.base import RESTART, Caps, CryptoFailure, Op, Status
from cryptfs.backends.software import SoftwareBackend
from cryptfs.core.convert import Converter
from cryptfs.core.geometry import Geometry
from cryptfs.core.stats import Stats
from cryptfs.crypto.spec import parse_spec
from cryptfs.errors import DeviceError

SPEC = parse_spec("aes-xts-plain64")
KEY = bytes(range(64))


def reference_encrypt(data: bytes, first_unit: int, du: int) -> bytes:
    """dm-crypt aes-xts-plain64, 512-byte IV sectors, written out directly."""
    out = bytearray()
    for i in range(len(data) // du):
        sector = (first_unit + i) * (du // 512)
        tweak = sector.to_bytes(16, "little")
        out += Cipher(algorithms.AES(KEY), modes.XTS(tweak)).encryptor().update(
            data[i * du:(i + 1) * du])
    return bytes(out)


class FakeEngine:
    """An asynchronous backend run by its own trio task: ``slots`` in flight, a backlog,
    and scripted faults by request number."""

    name = "fake"
    caps = Caps(asynchronous=True)

    def __init__(self, slots=2, fail=(), lose=(), raise_on=()):
        self.cipher = UnitCipher("xts", KEY)
        self.slots, self.fail, self.lose, self.raise_on = slots, set(fail), set(lose), set(raise_on)
        self.ring, self.backlog, self.seen = [], [], 0
        self.wake = trio.Event()
        self.completions = {}
        self.numbers = {}

    def submit(self, req):
        n, self.seen = self.seen, self.seen + 1
        if n in self.raise_on:
            raise CryptoFailure("scripted synchronous failure")
        self.numbers[id(req)] = n
        self.wake.set()
        if len(self.ring) < self.slots:
            self.ring.append(req)
            return Status.IN_PROGRESS
        self.backlog.append(req)
        return Status.BUSY

    async def run(self):
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            while self.ring:
                await trio.sleep(0.001)
                req = self.ring.pop(0)
                number = self.numbers[id(req)]
                if number not in self.lose:
                    if number not in self.fail:
                        for i in range(req.n_units):
                            du = req.data_unit_size
                            counter = int.from_bytes(req.iv, "little") + i * req.iv_step
                            iv = counter.to_bytes(16, "little")
                            self.cipher.crypt(req.op, iv, req.src[i * du:(i + 1) * du],
                                              req.dst[i * du:(i + 1) * du])
                    self.completions[number] = self.completions.get(number, 0) + 1
                    req.callback(req, -errno.EIO if number in self.fail else 0)
                if self.backlog:
                    moved = self.backlog.pop(0)
                    self.ring.append(moved)
                    moved.callback(moved, RESTART)

    def statistics(self):
        return {}

    def close(self):
        pass


def make(backend, du=512, multi_du=False, timeout=30.0):
    g = Geometry(du, 0, 1 << 20)
    stats = Stats()
    conv = Converter(backend, SoftwareBackend(SPEC, KEY), SPEC, KEY, g, stats,
                     mode="multi_du" if multi_du else "per_sector", completion_timeout=timeout)
    return conv, stats


async def run_with(engine, fn, *args):
    """``await fn(*args)`` while the engine's task runs."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        result = await fn(*args)
        nursery.cancel_scope.cancel()
    return result


@pytest.mark.parametrize("slots", [1, 2, 64])
@pytest.mark.parametrize("multi_du", [False, True])
async def test_async_engine_output_matches_reference(slots, multi_du, autojump_clock):
    engine = FakeEngine(slots=slots)
    conv, stats = make(engine, multi_du=multi_du)
    data = random.Random(1).randbytes(16 * 512)
    out = bytearray(len(data))
    await run_with(engine, conv.convert_async, Op.ENCRYPT, 7, memoryview(data), memoryview(out))
    assert bytes(out) == reference_encrypt(data, 7, 512)
    assert all(n == 1 for n in engine.completions.values())     # exactly one completion each
    if slots == 1 and not multi_du:
        assert stats.snapshot()["busy"] > 0
    assert "retries" not in stats.snapshot()


async def test_decrypt_round_trip_through_engine(autojump_clock):
    engine = FakeEngine(slots=3)
    conv, _ = make(engine, du=4096)
    data = random.Random(2).randbytes(8 * 4096)
    cipher = reference_encrypt(data, 3, 4096)
    out = bytearray(len(data))
    await run_with(engine, conv.convert_async, Op.DECRYPT, 3, memoryview(cipher), memoryview(out))
    assert bytes(out) == data


@pytest.mark.parametrize("fault", ["fail", "lose", "raise_on"])
async def test_failed_requests_are_redone_on_software(fault, autojump_clock):
    engine = FakeEngine(slots=2, **{fault: {1, 4, 5}})
    conv, stats = make(engine, timeout=5.0)
    data = random.Random(3).randbytes(8 * 512)
    out = bytearray(len(data))
    await run_with(engine, conv.convert_async, Op.ENCRYPT, 0, memoryview(data), memoryview(out))
    assert bytes(out) == reference_encrypt(data, 0, 512)
    counters = stats.snapshot()
    assert counters["retries"] == 3 and counters["retried_units"] == 3
    assert counters.get("timeouts", 0) == (3 if fault == "lose" else 0)


async def test_lost_completion_waits_for_the_timeout_then_recovers(autojump_clock):
    engine = FakeEngine(slots=8, lose={0})
    conv, _ = make(engine, timeout=7.0)
    data = bytes(4 * 512)
    out = bytearray(len(data))
    start = trio.current_time()
    await run_with(engine, conv.convert_async, Op.ENCRYPT, 0, memoryview(data), memoryview(out))
    assert trio.current_time() - start == pytest.approx(7.0, abs=0.1)
    assert bytes(out) == reference_encrypt(data, 0, 512)


class Broken(SoftwareBackend):
    def submit(self, req):
        raise CryptoFailure("broken")


def test_bio_fails_with_eio_when_the_fallback_fails_too():
    g = Geometry(512, 0, 1 << 20)
    conv = Converter(Broken(SPEC, KEY), Broken(SPEC, KEY), SPEC, KEY, g, Stats())
    with pytest.raises(DeviceError) as e:
        conv.convert(Op.ENCRYPT, 0, memoryview(bytes(1024)), memoryview(bytearray(1024)))
    assert e.value.errno == errno.EIO


class LiesAboutBeingSync(SoftwareBackend):
    def submit(self, req):
        return Status.IN_PROGRESS


def test_a_synchronous_backend_returning_in_progress_is_a_contract_error():
    conv = Converter(LiesAboutBeingSync(SPEC, KEY), SoftwareBackend(SPEC, KEY), SPEC, KEY,
                     Geometry(512, 0, 1 << 20), Stats())
    with pytest.raises(DeviceError, match="declares itself synchronous"):
        conv.convert(Op.ENCRYPT, 0, memoryview(bytes(512)), memoryview(bytearray(512)))


async def test_both_drivers_give_a_synchronous_backend_the_same_bytes():
    conv, _ = make(SoftwareBackend(SPEC, KEY), multi_du=True)
    data = random.Random(4).randbytes(8 * 512)
    by_thread, by_task = bytearray(len(data)), bytearray(len(data))
    conv.convert(Op.ENCRYPT, 5, memoryview(data), memoryview(by_thread))
    await conv.convert_async(Op.ENCRYPT, 5, memoryview(data), memoryview(by_task))
    assert bytes(by_thread) == bytes(by_task) == reference_encrypt(data, 5, 512)


def test_an_asynchronous_backend_is_refused_by_the_synchronous_driver():
    conv, _ = make(FakeEngine())
    with pytest.raises(RuntimeError, match="asynchronous"):
        conv.convert(Op.ENCRYPT, 0, memoryview(bytes(512)), memoryview(bytearray(512)))
