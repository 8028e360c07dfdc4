"""The simulated engine in C (backends/engine.c) and the native plane's asynchronous path over
it (cryptfs/fuse/offload.c): bytes against an independent XTS, the ring's BUSY and RESTART,
the timing model, every fault — alone and all at once under fio's crc32c verify, with the
failures counted in status —, and the self-test that refuses a corrupting engine."""

import errno
import json
import os
import random
import subprocess
import threading

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.backends import native
from cryptfs.backends.base import CryptoFailure, CryptoRequest, Op
from cryptfs.backends.engine import EngineOptions
from cryptfs.core import selftest
from cryptfs.core.geometry import Geometry
from cryptfs.crypto.spec import parse_spec
from helpers import VOLUME_KEY, cryptfs, mounted, needs, needs_fuse

pytestmark = pytest.mark.skipif(bool(native.UNAVAILABLE), reason=str(native.UNAVAILABLE))
SPEC = parse_spec("aes-xts-plain64")
KEY = VOLUME_KEY            # the volume fixture's (conftest)


def xts(data: bytes, first_sector: int, du: int = 512) -> bytes:
    """The independent oracle: pyca/cryptography's AES-XTS, unit by unit."""
    return b"".join(
        Cipher(algorithms.AES(KEY), modes.XTS((first_sector + i).to_bytes(16, "little")))
        .encryptor().update(data[i * du:(i + 1) * du]) for i in range(len(data) // du))


def engine(**options):
    from cryptfs.backends.engine_native import NativeEngine
    return NativeEngine(SPEC, bytearray(KEY), EngineOptions(**options), timeout=5.0)


def encrypt(e, data: bytes, first: int, du: int = 512) -> bytes:
    out = bytearray(len(data))
    e.submit(CryptoRequest(Op.ENCRYPT, memoryview(data), memoryview(out),
                           first.to_bytes(16, "little"), du, 1))
    return bytes(out)


@pytest.mark.parametrize("native_multi_du", [True, False])
@pytest.mark.parametrize("du", [512, 4096])
def test_the_engine_computes_xts(du, native_multi_du):
    e = engine(native_multi_du=native_multi_du, setup_us=1.0)
    try:
        data = random.Random(du).randbytes(8 * du)
        first = (1 << 32) - 3                   # across 2^32: 64-bit IV arithmetic
        assert encrypt(e, data, first, du) == xts(data, first, du)
        assert e.statistics()["completed"] == 1
    finally:
        e.close()


@pytest.mark.parametrize("cipher", ["aes-xts-plain", "aes-xts-plain64be", "aes-cbc-essiv:sha256",
                                    "aes-cbc-benbi", "aes-cbc-null"])
@pytest.mark.parametrize("mode", ["per_sector", "multi_du"])
def test_every_iv_mode_passes_the_self_test(cipher, mode):
    """The self-test compares with the software backend following the IV table."""
    from cryptfs.backends.engine_native import NativeEngine
    spec = parse_spec(cipher)
    key = bytes(range(64 if spec.mode == "xts" else 32))
    e = NativeEngine(spec, key, EngineOptions(setup_us=1.0))
    try:
        assert selftest.check(e, spec, key, Geometry(512, 0, 1 << 20),
                              mode) is None
    finally:
        e.close()


def test_a_corrupting_engine_fails_the_self_test():
    e = engine(corrupt=True)
    try:
        assert selftest.check(e, SPEC, KEY, Geometry(512, 0, 1 << 20),
                              "multi_du") == "wrong ciphertext for the known answer"
    finally:
        e.close()


def test_a_full_ring_backlogs_and_restarts_in_order():
    """Eight submitters on a one-slot ring: seven are BUSY, wait on the backlog, and all
    complete with the right bytes."""
    e = engine(queue_depth=1, channels=1, setup_us=2000.0)
    data = [random.Random(i).randbytes(1024) for i in range(8)]
    out = [None] * 8
    start = threading.Barrier(8)

    def submit(i):
        start.wait()
        out[i] = encrypt(e, data[i], i * 100)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = e.statistics()
    finally:
        e.close()
    assert out == [xts(d, i * 100) for i, d in enumerate(data)]
    assert stats["busy"] >= 1 and stats["backlog_high_water"] >= 1
    assert stats["completed"] == 8 and stats["in_flight"] == 0


def test_a_busy_storm_with_free_slots_still_completes():
    """Every other submission is told BUSY with the ring empty: the engine promotes it after
    a setup time, as no completion would free a slot."""
    e = engine(busy_storm_every=2, busy_storm_length=1, setup_us=50.0)
    try:
        for i in range(6):
            data = random.Random(i).randbytes(512)
            assert encrypt(e, data, i) == xts(data, i)
        assert e.statistics()["busy"] == 3
    finally:
        e.close()


@pytest.mark.parametrize("native_multi_du", [True, False])
def test_the_timing_model(native_multi_du):
    """engine_busy_s is the model's sum exactly: setup per job (one per request, or one per
    unit), per-unit cost, bytes at the channel's throughput; no completion comes sooner."""
    e = engine(setup_us=100.0, per_unit_us=2.0, throughput_mbps=512.0,
               native_multi_du=native_multi_du)
    try:
        encrypt(e, bytes(8 * 512), 0)
        stats = e.statistics()
    finally:
        e.close()
    jobs = 1 if native_multi_du else 8
    model_us = jobs * 100 + 8 * 2.0 + 4096 / 512
    assert stats["engine_busy_s"] == pytest.approx(model_us / 1e6, abs=1e-8)
    assert stats["latency_mean_us"] >= model_us


@pytest.mark.parametrize("fault, options, code", [
    ("error", {"error_rate": 1.0}, errno.EIO),
    ("lost", {"lost_rate": 1.0}, errno.ETIMEDOUT),
    ("nomem", {"nomem_rate": 1.0}, errno.ENOMEM),
])
def test_faults_complete_with_their_errno(fault, options, code):
    from cryptfs.backends.engine_native import NativeEngine
    e = NativeEngine(SPEC, bytearray(KEY), EngineOptions(**options), timeout=0.2)
    try:
        with pytest.raises(CryptoFailure) as failure:
            encrypt(e, bytes(2048), 0)
        assert failure.value.errno == code
        if fault == "nomem":        # only multi-unit requests lack memory
            assert encrypt(e, bytes(512), 9) == xts(bytes(512), 9)
        stats = e.statistics()
    finally:
        e.close()
    assert stats[{"error": "errors_injected", "lost": "lost", "nomem": "nomem_injected"}[
        fault]] == 1


# --- through the native plane -------------------------------------------------------------

FAULTS = {
    "errors": ["error_rate=0.02"],
    "lost": ["lost_rate=0.005"],
    "busy-storms": ["busy_storm_every=40", "busy_storm_length=8", "queue_depth=4"],
    "nomem": ["nomem_rate=0.2"],
    "all": ["error_rate=0.02", "lost_rate=0.005", "busy_storm_every=40",
            "busy_storm_length=8", "queue_depth=4", "nomem_rate=0.2"],
}


def status(mnt) -> dict:
    with open(mnt / "stats") as f:
        return json.load(f)


def fio_verify(mnt) -> None:
    result = subprocess.run([
        "fio", "--name=verify", f"--filename={mnt}/device", "--rw=randwrite",
        "--bsrange=512-64k", "--bs_unaligned=1", "--numjobs=4", "--size=4M",
        "--offset_increment=8M", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
        "--direct=1", "--ioengine=psync", "--group_reporting", "--output-format=json",
        "--verify_state_save=0"], capture_output=True, text=True, timeout=300, cwd=mnt.parent)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    job = json.loads(result.stdout[result.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0 and job["read"]["io_bytes"] == job["write"]["io_bytes"] > 0


@needs_fuse
@needs("fio")
@pytest.mark.parametrize("mode", ["multi_du", "per_sector"])
@pytest.mark.parametrize("fault", FAULTS)
def test_fio_verify_through_each_fault_on_the_native_plane(volume, fault, mode):
    """No mismatch, every failure redone or counted, nothing left in flight.  (Seed 0: the
    start-up self-test's requests draw no fault — it refuses an engine that fails one — so the
    faults hit the data path.)"""
    image, key, mnt = volume
    settings = [arg for f in FAULTS[fault] + ["seed=0"]
                for arg in ("--set", f"backend.engine.{f}")]
    with mounted(image, mnt, "--type", "plain", "--key-file", key, "--backend", "engine",
                 "--set", "pipeline.plane='native'", "--set", f"pipeline.mode='{mode}'",
                 "--set", "pipeline.completion_timeout=0.2", *settings):
        fio_verify(mnt)
        s = status(mnt)
    engine_stats, counters = s["backend_stats"], s["counters"]
    assert (s["plane"], s["backend"], s["backend_refused"]) == ("native", "engine", None)
    assert engine_stats["in_flight"] == 0 and counters.get("failed_bios", 0) == 0
    assert counters.get("errors", 0) == 0          # no FUSE request answered with an error
    if "error_rate=0.02" in FAULTS[fault]:
        assert engine_stats["errors_injected"] > 0
        assert counters["retries"] >= 1 and counters["retried_units"] >= 1
    if "lost_rate=0.005" in FAULTS[fault]:
        assert engine_stats["lost"] > 0 and counters["timeouts"] >= engine_stats["lost"]
    if "busy_storm_every=40" in FAULTS[fault]:
        assert engine_stats["busy"] > 0 and counters["busy"] == engine_stats["busy"]
    if "nomem_rate=0.2" in FAULTS[fault] and mode == "multi_du":
        assert engine_stats["nomem_injected"] > 0
        # a bio goes again per unit once, however many of its requests lacked memory (an
        # unaligned write's two edges), unless a timeout sent it to the core first
        assert 1 <= counters["multi_du_retried_bios"] <= engine_stats["nomem_injected"]


@needs_fuse
def test_a_corrupting_engine_is_refused_and_the_device_serves(volume):
    """Asked for the native plane, the refusal is one line and nothing is mounted; on auto
    the device opens on software (the trio plane) and says why."""
    image, key, mnt = volume
    mnt.mkdir()
    args = ("open", image, mnt, "--type", "plain", "--key-file", key, "--backend", "engine",
            "--set", "backend.engine.corrupt=true")
    refused = cryptfs(*args, "--set", "pipeline.plane='native'")
    assert refused.returncode != 0 and not os.path.ismount(mnt)
    error = refused.stderr.strip().splitlines()[-1]         # after the log's warning
    assert error.startswith("cryptfs: config: [pipeline] plane = \"native\" cannot serve")
    assert "engine failed its self-test" in error
    with mounted(image, mnt, *args[3:]):
        s = status(mnt)
        assert (s["backend"], s["plane"]) == ("software", "trio")
        assert "engine failed its self-test: wrong ciphertext" in s["backend_refused"]
        data = random.Random(1).randbytes(5000)
        with open(mnt / "device", "r+b", buffering=0) as f:
            f.seek(700)
            f.write(data)
            f.seek(700)
            assert f.read(len(data)) == data
    assert image.read_bytes()[1024:5120] == xts(data[1024 - 700:5120 - 700], 2)
