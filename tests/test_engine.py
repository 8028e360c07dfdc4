"""The simulated hardware engine, on trio's mock clock: ring and backlog order, BUSY →
RESTART → completion, callbacks from the engine's own task, exactly one completion per
request, the timing model, faults and timeouts, and the start-up self-test."""

import logging
import random

import pytest
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.backends.base import RESTART, CryptoRequest, Op, Status
from cryptfs.backends.engine import EngineBackend, EngineOptions
from cryptfs.backends.software import SoftwareBackend
from cryptfs.core.convert import Converter
from cryptfs.core.geometry import Geometry
from cryptfs.core.stats import Stats
from cryptfs.crypto.spec import parse_spec
from helpers import open_plain

SPEC = parse_spec("aes-xts-plain64")
KEY = bytes(range(64))


def xts(data: bytes, first_sector: int, du: int = 512) -> bytes:
    out = b""
    for i in range(len(data) // du):
        tweak = (first_sector + i * (du // 512)).to_bytes(16, "little")
        out += Cipher(algorithms.AES(KEY), modes.XTS(tweak)).encryptor().update(
            data[i * du:(i + 1) * du])
    return out


def request(n_units: int, first: int, log: list, label) -> CryptoRequest:
    data = random.Random(first).randbytes(n_units * 512)
    req = CryptoRequest(Op.ENCRYPT, memoryview(data), memoryview(bytearray(len(data))),
                        first.to_bytes(16, "little"), 512, 1)
    req.callback = lambda r, err: log.append((label, err, trio.lowlevel.current_task()))
    return req


async def test_ring_backlog_restart_and_completion_order(autojump_clock):
    engine = EngineBackend(SPEC, bytearray(KEY), EngineOptions(queue_depth=2, channels=1))
    log = []
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        me = trio.lowlevel.current_task()
        reqs = [request(1, i * 10, log, i) for i in range(5)]
        statuses = [engine.submit(r) for r in reqs]
        assert statuses == [Status.IN_PROGRESS] * 2 + [Status.BUSY] * 3
        while sum(1 for _, err, _ in log if err != RESTART) < 5:
            await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    finals = [label for label, err, _ in log if err != RESTART]
    restarts = [label for label, err, _ in log if err == RESTART]
    assert finals == [0, 1, 2, 3, 4]                      # ring order
    assert restarts == [2, 3, 4]                          # backlogged ones, each told once
    for label in (2, 3, 4):                               # told before its result
        kinds = [err for lab, err, _ in log if lab == label]
        assert kinds == [RESTART, 0]
    assert all(task is not me for _, _, task in log)      # from the engine's task
    for i, r in enumerate(reqs):
        assert bytes(r.dst) == xts(bytes(r.src), i * 10)
    stats = engine.statistics()
    assert stats["busy"] == 3 and stats["backlog_high_water"] == 3 and stats["completed"] == 5


@pytest.mark.parametrize("native", [True, False])
async def test_timing_model(autojump_clock, native):
    o = {"setup_us": 100.0, "per_unit_us": 2.0, "throughput_mbps": 512.0,
         "native_multi_du": native}
    engine = EngineBackend(SPEC, bytearray(KEY), EngineOptions(**o))
    log = []
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        start = trio.current_time()
        engine.submit(request(16, 0, log, "r"))
        while not log:
            await trio.sleep(1e-6)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    jobs = 1 if native else 16
    expected = (jobs * 100 + 16 * 2) / 1e6 + 16 * 512 / 512e6
    assert elapsed == pytest.approx(expected, rel=0.05)
    assert engine.caps.native_multi_du is native


def converter(engine, timeout=1.0, mode="multi_du"):
    stats = Stats()
    return Converter(engine, SoftwareBackend(SPEC, KEY), SPEC, KEY, Geometry(512, 0, 1 << 24),
                     stats, mode=mode, completion_timeout=timeout), stats


@pytest.mark.parametrize("fault, options, counter", [
    ("errors", {"error_rate": 0.3}, "retries"),
    ("lost", {"lost_rate": 0.3}, "timeouts"),
    ("storms", {"busy_storm_every": 5, "busy_storm_length": 3, "queue_depth": 4}, "busy"),
    ("nomem", {"nomem_rate": 0.5}, "multi_du_retried_bios"),
])
async def test_faults_never_give_wrong_data_and_always_finish(autojump_clock, fault, options,
                                                              counter):
    engine = EngineBackend(SPEC, bytearray(KEY), EngineOptions(seed=3, **options))
    conv, stats = converter(engine, mode="per_sector" if fault == "storms" else "multi_du")
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        for bio in range(20):
            data = random.Random(bio).randbytes(8 * 512)
            out = bytearray(len(data))
            await conv.convert_async(Op.ENCRYPT, bio * 8, memoryview(data), memoryview(out))
            assert bytes(out) == xts(data, bio * 8)
        nursery.cancel_scope.cancel()
    assert stats.snapshot().get(counter, 0) > 0


async def test_a_lost_completion_is_caught_by_the_timeout(autojump_clock):
    engine = EngineBackend(SPEC, bytearray(KEY), EngineOptions(lost_rate=1.0))
    conv, stats = converter(engine, timeout=2.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        start = trio.current_time()
        data = bytes(4 * 512)
        out = bytearray(len(data))
        await conv.convert_async(Op.ENCRYPT, 0, memoryview(data), memoryview(out))
        assert trio.current_time() - start == pytest.approx(2.5, abs=0.01)
        nursery.cancel_scope.cancel()
    assert bytes(out) == xts(data, 0)
    assert stats.snapshot()["timeouts"] == 1 and engine.statistics()["lost"] == 1


async def test_corrupting_engine_is_refused_at_start_and_the_device_works(tmp_path, caplog):
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    daemon = open_plain(image, KEY, backend="engine")
    daemon.stack.backend.options.corrupt = True
    with caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            await daemon.start(nursery)
            assert daemon.stack.backend.name == "software"
            assert daemon.queue.reads == daemon.queue.writes == "inline"
            data = random.randbytes(20000)
            assert await daemon.queue.write(777, data) == len(data)
            assert bytes(await daemon.queue.read(777, len(data))) == data
            nursery.cancel_scope.cancel()
    assert "backend engine failed its self-test (wrong ciphertext" in caplog.text
    assert "engine failed its self-test" in daemon.status()["backend_refused"]
    daemon.close()
    # sectors 2..39 lie wholly inside the write: their ciphertext is dm-crypt's
    assert image.read_bytes()[1024:20480] == xts(data[1024 - 777:20480 - 777], 2)


async def test_an_engine_too_slow_for_its_self_test_is_stopped_with_it(tmp_path, caplog,
                                                                       autojump_clock):
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    daemon = open_plain(image, KEY, backend="engine", backend_options={"setup_us": 5e6},
                        completion_timeout=1.0, mode="per_sector")      # jobs queue up
    with caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            await daemon.start(nursery)
            assert daemon.stack.backend.name == "software"
            await trio.sleep(60)    # the refused engine's queued jobs would have run by now
            data = random.randbytes(5000)
            assert await daemon.queue.write(100, data) == len(data)
            assert bytes(await daemon.queue.read(100, len(data))) == data
            nursery.cancel_scope.cancel()
    assert "backend engine failed its self-test (requests failed" in caplog.text
    daemon.close()


async def test_a_late_completion_of_an_edge_read_cannot_reach_the_write(tmp_path,
                                                                        autojump_clock):
    """An unaligned write reads its edge unit first.  When that read times out (the engine is
    busy with another job) and is redone on software, the engine's late result must not land
    in the buffer the write then encrypts."""
    old = random.Random(5).randbytes(4 * 512)
    image = tmp_path / "image"
    image.write_bytes(xts(old, 0) + bytes((1 << 20) - len(old)))
    daemon = open_plain(image, KEY, backend="engine", completion_timeout=1.0)
    async with trio.open_nursery() as nursery:
        await daemon.start(nursery)
        daemon.stack.backend.options.setup_us = 1.5e6   # now each job takes 1.5 s
        nursery.start_soon(daemon.queue.read, 8192, 4096)   # holds the engine until t=1.5
        await trio.sleep(0.1)
        data = random.Random(6).randbytes(100)
        assert await daemon.queue.write(100, data) == len(data)   # edge read times out at 1.1
        await trio.sleep(10)                                     # every late job has run
        nursery.cancel_scope.cancel()
    daemon.close()
    new = old[:100] + data + old[200:512]
    assert image.read_bytes()[:512] == xts(new, 0)


async def test_healthy_engine_passes_its_self_test(tmp_path):
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    daemon = open_plain(image, KEY, backend="engine")
    async with trio.open_nursery() as nursery:
        await daemon.start(nursery)
        assert daemon.stack.backend.name == "engine" and daemon.stack.refused is None
        assert daemon.queue.reads == daemon.queue.writes == "async"
        nursery.cancel_scope.cancel()
    daemon.close()


def test_engine_options_are_checked(tmp_path):
    from cryptfs.core.config import backend_options, load
    from cryptfs.errors import ConfigError
    (tmp_path / "c.toml").write_text("[backend]\nname = 'engine'\n[backend.engine]\n"
                                     "error_rate = 2\n")
    with pytest.raises(ConfigError, match=r"\[backend.engine\] error_rate must be between 0 "
                                          "and 1, got 2.0"):
        backend_options(load(str(tmp_path / "c.toml")), EngineOptions)
