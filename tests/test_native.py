"""The native core (backends/_native.c) against independent references.

The published vectors (IEEE 1619, cryptsetup's IV table) run over it in test_vectors.py, as
the ``multidu`` backend.  Here: hypothesis equivalence with the ``software`` backend — a
separate implementation (pyca/cryptography, IVs computed in Python by cryptfs.ivgen) — on
random bios of every IV mode and layout, split over threads or not, in place or not; the
contract's edges (plain's 2^32 wrap, counters near 2^64); the API's refusals; and that the
GIL is released, calls are thread-safe and the worker threads survive a fork.
"""

import os
import random
import select
import signal
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptfs.backends import native
from cryptfs.backends.base import CryptoFailure, CryptoRequest, Op
from cryptfs.backends.software import SoftwareBackend
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.spec import parse_spec
from cryptfs.tools.verify import CIPHERS

pytestmark = pytest.mark.skipif(native.UNAVAILABLE, reason=str(native.UNAVAILABLE))
MASK128 = (1 << 128) - 1


def first_iv(ivmode: str, sector: int) -> bytes:
    """The request IV the convert loop hands a backend that derives ``ivmode``: the mode's own
    IV for counter modes, else the plain64 IV of the first unit."""
    gen = ivmode if IV_MODES[ivmode].byteorder else "plain64"
    return IV_MODES[gen].generator(b"", None)(sector)


def reference(spec, key: bytes, op: Op, data: bytes, du: int, sector: int, step: int) -> bytes:
    """What each unit's IV is by the contract, computed by ``software`` unit by unit.

    plain64/plain64be: the first IV as a 128-bit counter plus i·step (mod 2^128), through the
    software auto-splitter; plain and the derived modes: dm-crypt's per-sector IV of sector
    + i·step (plain wraps at 2^32, the derived modes' sector at 2^64)."""
    software = SoftwareBackend(spec, key)
    ivmode = IV_MODES[spec.ivmode]
    out = bytearray(len(data))
    if ivmode.byteorder and ivmode.counter_bits == 128:
        software.submit(CryptoRequest(op, memoryview(data), memoryview(out),
                                      first_iv(spec.ivmode, sector), du, step))
        return bytes(out)
    ivgen = ivmode.generator(key, spec.ivopts)
    for i in range(len(data) // du):
        unit_sector = (sector + i * step) & ((1 << 64) - 1)
        software.submit(CryptoRequest(op, memoryview(data)[i * du:(i + 1) * du],
                                      memoryview(out)[i * du:(i + 1) * du], ivgen(unit_sector),
                                      du))
    return bytes(out)


SECTORS = st.one_of(st.integers(0, 2**40),
                    st.integers(2**32 - 4096, 2**32 + 16),        # plain's wrap
                    st.integers(2**64 - 40000, 2**64 - 1))        # near 2^64


@pytest.mark.parametrize("cipher", CIPHERS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_core_matches_software_on_random_bios(cipher, data):
    spec = parse_spec(cipher)
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    key = rng.randbytes(data.draw(st.sampled_from(
        [b // 8 for b in ((256, 512) if spec.mode == "xts" else (128, 192, 256))]), label="key"))
    du = data.draw(st.sampled_from([512, 1024, 2048, 4096]), label="sector size")
    large = data.draw(st.booleans(), label="iv_large_sectors")
    step = 1 if large else du // 512
    n = data.draw(st.integers(1, 2048 if du == 512 else 2048 * 512 // du), label="units")
    sector = data.draw(SECTORS, label="first IV sector")
    op = data.draw(st.sampled_from(list(Op)), label="op")
    in_place = data.draw(st.booleans(), label="in place")
    threads = data.draw(st.sampled_from([1, 2, 3, 8]), label="threads")
    src = rng.randbytes(n * du)
    expected = reference(spec, key, op, src, du, sector, step)
    core = native.keyed_core(spec, bytearray(key))
    buf = bytearray(src)
    dst = buf if in_place else bytearray(len(src))
    core.crypt(op is Op.ENCRYPT, memoryview(buf), memoryview(dst),
               first_iv(spec.ivmode, sector), du, step, threads)
    assert bytes(dst) == expected
    if not in_place:
        assert bytes(buf) == src                        # the source is left as it was
    core.close()


@pytest.mark.parametrize("cipher", ["aes-xts-plain64", "aes-cbc-essiv:sha256", "aes-xts-plain"])
@pytest.mark.parametrize("units, du", [(2049, 512), (3 * 1024 + 7, 512), (389, 4096)])
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_large_bios_split_over_threads_match_software(cipher, units, du, threads):
    # Bios split over threads: uneven
    # pieces, each unit with its IV, the plain counter wrapping inside one of them.
    spec = parse_spec(cipher)
    rng = random.Random(units * threads)
    key = rng.randbytes(spec.default_key_bits // 8)
    src = rng.randbytes(units * du)
    sector = 2**32 - 1000 if spec.ivmode == "plain" else 12345
    out = bytearray(len(src))
    native.keyed_core(spec, key).crypt(True, src, out, first_iv(spec.ivmode, sector), du, 1,
                                       threads)
    assert bytes(out) == reference(spec, key, Op.ENCRYPT, src, du, sector, 1)


def test_plain_wraps_inside_one_request_as_dm_crypt_does():
    spec, key = parse_spec("aes-xts-plain"), bytes(range(1, 65))
    src = random.Random(5).randbytes(64 * 512)
    out = bytearray(len(src))
    native.keyed_core(spec, key).crypt(True, src, out, first_iv("plain", 2**32 - 10), 512, 1)
    # units 10.. restart at IV 0: unit 10 is what sector 0 gives, as dm-crypt computes it
    assert bytes(out[10 * 512:11 * 512]) == reference(spec, key, Op.ENCRYPT,
                                                      src[10 * 512:11 * 512], 512, 0, 1)


def core():
    return native.keyed_core(parse_spec("aes-xts-plain64"), bytes(range(1, 65)))


@pytest.mark.parametrize("src, dst, iv, du, fragment", [
    (bytes(1000), bytearray(1000), bytes(16), 512, "multiple of data_unit_size"),
    (bytes(1024), bytearray(512), bytes(16), 512, "equal lengths"),
    (bytes(1024), bytearray(1024), bytes(8), 512, "iv must be 16 bytes"),
    (bytes(1024), bytearray(1024), bytes(16), 500, "power of two"),
])
def test_bad_requests_are_refused(src, dst, iv, du, fragment):
    with pytest.raises(ValueError, match=fragment):
        core().crypt(True, src, dst, iv, du, 1)


def test_a_partial_overlap_is_refused_and_in_place_is_not():
    buf = memoryview(bytearray(4096))
    c = core()
    with pytest.raises(ValueError, match="overlap"):
        c.crypt(True, buf[:2048], buf[512:2560], bytes(16), 512, 1)
    c.crypt(True, buf[:2048], buf[:2048], bytes(16), 512, 1)
    with pytest.raises(BufferError):                    # the destination must be writable
        c.crypt(True, bytes(512), bytes(512), bytes(16), 512, 1)


def test_keys_the_software_backend_refuses_are_refused():
    with pytest.raises(CryptoFailure, match="refuses this key"):
        native.keyed_core(parse_spec("aes-xts-plain64"), bytes(48))         # no XTS size
    with pytest.raises(CryptoFailure, match="refuses this key"):
        native.keyed_core(parse_spec("aes-xts-plain64"), bytes(64))         # equal halves


def test_a_closed_core_refuses_work():
    c = core()
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.crypt(True, bytes(512), bytearray(512), bytes(16), 512, 1)


def test_a_core_never_keyed_refuses_work():
    from cryptfs.backends import _native
    c = _native.Core.__new__(_native.Core)
    with pytest.raises(ValueError, match="never keyed"):
        c.crypt(True, bytes(512), bytearray(512), bytes(16), 512, 1)
    c.close()


def test_calls_from_many_threads_at_once_are_each_right():
    spec, key = parse_spec("aes-cbc-essiv:sha256"), bytes(range(32))
    c = native.keyed_core(spec, key)
    jobs = [(random.Random(i).randbytes(256 * 512), i * 1000) for i in range(16)]
    results = [None] * len(jobs)

    def work(i):
        src, sector = jobs[i]
        out = bytearray(len(src))
        for _ in range(5):
            c.crypt(True, src, out, first_iv("essiv", sector), 512, 1, 2)
        results[i] = bytes(out)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (src, sector), got in zip(jobs, results):
        assert got == reference(spec, key, Op.ENCRYPT, src, 512, sector, 1)


def test_the_gil_is_released_while_a_bio_converts():
    # One thread converts 64 MiB; meanwhile this thread counts.  Were the GIL held for the
    # call, this thread could not run a single iteration until it returned.
    src = bytearray(64 << 20)
    done = threading.Event()
    c = core()

    def convert():
        c.crypt(True, src, src, bytes(16), 512, 1)
        done.set()

    worker = threading.Thread(target=convert)
    count = 0
    worker.start()
    while not done.is_set():
        count += 1
    worker.join()
    assert count > 1000


def test_split_work_survives_a_fork():
    # The daemon forks after assembling the device; the child's worker threads must be its own.
    c = core()
    src = random.Random(3).randbytes(1 << 20)
    parent = bytearray(len(src))
    c.crypt(True, src, parent, bytes(16), 512, 1, 4)      # workers started here
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                                        # the child
        child = bytearray(len(src))
        c.crypt(True, src, child, bytes(16), 512, 1, 4)
        os.write(write_end, b"ok" if child == parent else b"wrong")
        os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 60)
    if not ready:                                   # a child deadlocked on its parent's lock
        os.kill(pid, signal.SIGKILL)
    verdict = os.read(read_end, 16) if ready else b"hung"
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert verdict == b"ok" and status == 0


def test_bench_core_measures_every_cipher_the_core_runs():
    from cryptfs.tools.bench import core
    rows, found = core.ciphers(0.01, 1, 2)
    assert [row[0] for row in rows] == list(core.CIPHERS)
    assert len(found) == len(core.CIPHERS) * len(core.UNIT_SIZES) * 2
    assert all(speed > 0 for speed in found.values())
