"""``cryptfs serve``: the decrypted device over NBD through nbdkit, checked with other people's
clients — qemu-img, qemu-io, nbdcopy, nbdinfo, fio's nbd engine — and other people's tools on
the image afterwards (qemu-img for LUKS1, cryptsetup for LUKS2).

Every test lists its exports in a runtime directory of its own (``CRYPTFS_RUNTIME_DIR``), so
``status`` and ``close --all`` here never reach an export anyone else is running.
"""

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import (
    PASSPHRASE,
    ROOT,
    cryptfs,
    cryptsetup,
    needs,
    qemu_luks_decrypt,
    qemu_luks_encrypt,
    reencrypt_luks2,
    sha256,
)

SIZE = 4 << 20
#: unaligned writes (negative offsets count from the end): mid-sector, across data units, the end
WRITES = [(1000, 5000, 0x5A), (4095, 9000, 0xC3), (-700, 700, 0x11)]
ZEROED = (65536, 65536)


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYPTFS_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path / "run"


@pytest.fixture
def sock(tmp_path):
    """A socket path short enough for AF_UNIX (pytest's tmp_path may not be)."""
    where = Path(tempfile.mkdtemp(prefix="cfs-nbd-", dir="/tmp"))
    yield where / "nbd.sock"
    shutil.rmtree(where, ignore_errors=True)


def luks1_image(tmp_path: Path, seed: int, size: int = SIZE,
                passphrase: str = PASSPHRASE) -> tuple[Path, bytes]:
    """A LUKS1 image qemu-img made from random plaintext: (image, plaintext)."""
    plain, image = tmp_path / "plain.raw", tmp_path / "image.luks"
    plaintext = random.Random(seed).randbytes(size)
    plain.write_bytes(plaintext)
    qemu_luks_encrypt(plain, image, passphrase=passphrase)
    return image, plaintext


def uri(sock: Path) -> str:
    return f"nbd+unix:///?socket={sock}"


def entries(runtime: Path) -> list[dict]:
    folder = runtime / "exports"
    return [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.exists() else []


@contextlib.contextmanager
def served(image: Path, sock: Path, *options: str, input: bytes = PASSPHRASE.encode()):
    """``cryptfs serve IMAGE --socket SOCK`` (passphrase on stdin) for a with-block; closed
    afterwards, flushing."""
    log = sock.parent / "serve.log"
    result = cryptfs("serve", image, "--socket", sock, "--key-file", "-", "--log-file", log,
                     *options, input=input)
    assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
    try:
        yield result
    finally:
        closed = cryptfs("close", sock)
        assert closed.returncode == 0, closed.stderr


def run(*argv: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, argv)], capture_output=True, input=input, timeout=120)


def read_qemu_img(source: str, out: Path, *objects: str) -> bytes:
    """The whole export through ``qemu-img convert`` (``source``: a URI, or --image-opts
    options when ``objects`` are given)."""
    opts = [*objects, "--image-opts", source] if objects else ["-f", "raw", source]
    done = run("qemu-img", "convert", *opts, "-O", "raw", out)
    assert done.returncode == 0, done.stderr.decode()
    return out.read_bytes()


def read_nbdcopy(source: str, out: Path) -> bytes:
    done = run("nbdcopy", source, out)
    assert done.returncode == 0, done.stderr.decode()
    return out.read_bytes()


def qemu_io(source: str, *commands: str) -> subprocess.CompletedProcess:
    args = [a for c in commands for a in ("-c", c)]
    return run("qemu-io", "-f", "raw", *args, source)


def write_over_nbd(source: str, plaintext: bytes) -> bytes:
    """WRITES and a WRITE_ZEROES through qemu-io, then FLUSH; what the device should hold."""
    model = bytearray(plaintext)
    commands = []
    for offset, length, pattern in WRITES:
        offset %= len(model)
        commands.append(f"write -P {pattern:#x} {offset} {length}")
        model[offset:offset + length] = bytes([pattern]) * length
    commands += [f"write -z {ZEROED[0]} {ZEROED[1]}", "flush"]
    model[ZEROED[0]:sum(ZEROED)] = bytes(ZEROED[1])
    done = qemu_io(source, *commands)
    assert done.returncode == 0 and b"failed" not in done.stdout + done.stderr, done
    return bytes(model)


def status_of(sock: Path, until=lambda status: True) -> dict:
    """The export's status, once ``until(status)`` holds (the plugin rewrites it each second
    something changed, at once when a connection comes or goes)."""
    deadline = time.monotonic() + 10
    while True:
        status = json.loads(cryptfs("status", sock, "--json", check=True).stdout)
        if until(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


# --- interop ---------------------------------------------------------------------------------

@needs("nbdkit", "qemu-img", "qemu-io", "nbdcopy")
def test_qemu_luks1_image_served_read_and_written(tmp_path, sock):
    image, plaintext = luks1_image(tmp_path, 1)
    with served(image, sock) as result:
        assert f"{uri(sock)} serves" in result.stderr and "this machine only" in result.stderr
        assert read_qemu_img(uri(sock), tmp_path / "a.raw") == plaintext
        assert read_nbdcopy(uri(sock), tmp_path / "b.raw") == plaintext
        model = write_over_nbd(uri(sock), plaintext)
        status = status_of(sock, until=lambda s: "zeroes" in s["counters"])
        assert status["backend"] == "multidu" and status["backend_refused"] is None, \
            "the native core did not load inside nbdkit"
        assert status["counters"]["flushes"] >= 1 and status["counters"]["zeroes"] == 1
    assert qemu_luks_decrypt(image, tmp_path / "out.raw") == model


LUKS2 = [(512, False, "pbkdf2"), (4096, False, "pbkdf2"), (4096, True, "pbkdf2"),
         (512, True, "argon2id")]


@needs("nbdkit", "qemu-img", "qemu-io", "nbdcopy", "cryptsetup")
@pytest.mark.slow
@pytest.mark.parametrize("sector_size, detached, pbkdf", LUKS2,
                         ids=[f"{s}-{'detached' if d else 'attached'}-{k}" for s, d, k in LUKS2])
def test_cryptsetup_luks2_image_served_read_and_written(tmp_path, sock, sector_size, detached,
                                                       pbkdf):
    plaintext = random.Random(sector_size).randbytes(SIZE)
    image, header = reencrypt_luks2(tmp_path, plaintext, sector_size, pbkdf, detached)
    options = ["--header", str(header)] if header else []
    # a detached header leaves the whole file to the device; an attached one gives it the
    # space --reduce-device-size freed at the end too: the plaintext is its first SIZE bytes
    with served(image, sock, *options):
        read = read_qemu_img(uri(sock), tmp_path / "a.raw")
        assert read[:SIZE] == plaintext and (len(read) == SIZE) == detached
        assert read_nbdcopy(uri(sock), tmp_path / "b.raw")[:SIZE] == plaintext
        model = write_over_nbd(uri(sock), plaintext)
    cryptsetup("open", "--test-passphrase", *options, str(image))
    if header:
        copy, header_copy = tmp_path / "copy", tmp_path / "header-copy"
        shutil.copy(image, copy)
        shutil.copy(header, header_copy)
        cryptsetup("reencrypt", "--decrypt", "--header", str(header_copy),
                   "--force-offline-reencrypt", str(copy))
        assert copy.read_bytes() == model
    else:
        import cryptfs as api
        with api.open_image(image, passphrase=PASSPHRASE) as device:
            assert device.read(SIZE) == model


@needs("nbdkit", "qemu-img", "qemu-io", "nbdinfo")
def test_read_only_export_refuses_writes_and_leaves_the_image_alone(tmp_path, sock):
    image, plaintext = luks1_image(tmp_path, 2)
    before = sha256(image)
    with served(image, sock, "--read-only"):
        info = json.loads(run("nbdinfo", "--json", uri(sock)).stdout)
        assert info["exports"][0]["is_read_only"] is True
        done = qemu_io(uri(sock), "write -P 0x55 0 4096", "flush")
        assert done.returncode != 0 or b"failed" in done.stdout + done.stderr
        assert read_qemu_img(uri(sock), tmp_path / "a.raw") == plaintext
    assert sha256(image) == before


@needs("nbdkit", "qemu-img", "qemu-io", "nbdcopy")
def test_two_clients_at_once(tmp_path, sock):
    image = tmp_path / "plain.img"
    image.write_bytes(bytes(SIZE))
    key = tmp_path / "key"
    key.write_bytes(bytes(range(64)))
    with served(image, sock, "--type", "plain", "--key-file", str(key), input=None):
        # two writers on disjoint halves, each on its own connection, at once
        writers = [subprocess.Popen(["qemu-io", "-f", "raw", "-c",
                                     f"write -P {0x30 + i} {i * SIZE // 2} {SIZE // 2}",
                                     uri(sock)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                   for i in range(2)]
        assert all(w.wait(60) == 0 for w in writers)
        expected = bytes([0x30]) * (SIZE // 2) + bytes([0x31]) * (SIZE // 2)
        # then two readers at once: nbdcopy (multi-conn: several connections) and qemu-img
        readers = [subprocess.Popen(["nbdcopy", uri(sock), tmp_path / "r0"]),
                   subprocess.Popen(["qemu-img", "convert", "-f", "raw", uri(sock), "-O", "raw",
                                     tmp_path / "r1"])]
        assert all(r.wait(60) == 0 for r in readers)
        assert (tmp_path / "r0").read_bytes() == expected == (tmp_path / "r1").read_bytes()
        assert status_of(sock, until=lambda s: s["connections_total"] >= 4)[
            "connections_total"] >= 4


@needs("nbdkit", "qemu-img", "nbdinfo")
def test_tls_psk_with_qemu_img_and_a_plaintext_client_refused(tmp_path, sock):
    image, plaintext = luks1_image(tmp_path, 3)
    creds = tmp_path / "psk"
    creds.mkdir()
    (creds / "keys.psk").write_text(f"alice:{os.urandom(32).hex()}\n")
    (creds / "keys.psk").chmod(0o600)
    with served(image, sock, "--tls-psk", str(creds / "keys.psk")) as result:
        assert "TLS required" in result.stderr
        assert read_qemu_img(
            f"driver=nbd,server.type=unix,server.path={sock},tls-creds=tls0", tmp_path / "a.raw",
            "--object", f"tls-creds-psk,id=tls0,endpoint=client,dir={creds},username=alice"
        ) == plaintext
        refused = run("qemu-img", "convert", "-f", "raw", uri(sock), "-O", "raw",
                      tmp_path / "b.raw")
        assert refused.returncode != 0 and b"TLS" in refused.stderr
        assert run("nbdinfo", uri(sock)).returncode != 0


@needs("nbdkit", "qemu-img")
def test_the_passphrase_is_in_no_process_argv_and_its_memfd_is_emptied(tmp_path, sock):
    passphrase = f"nbd-secret-{os.urandom(8).hex()}"
    image, _ = luks1_image(tmp_path, 4, 1 << 20, passphrase)
    with served(image, sock, input=passphrase.encode()):
        pid = status_of(sock)["pid"]
        seen = []
        for proc in Path("/proc").iterdir():
            for name in ("cmdline", "environ"):
                try:
                    if passphrase.encode() in (proc / name).read_bytes():
                        seen.append(f"{proc.name}/{name}")
                except OSError:
                    continue
        assert seen == []
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        assert cmdline[0].endswith(b"/nbdkit") and any(a.startswith(b"keyfd=") for a in cmdline)
        fds = [os.readlink(f) for f in (Path("/proc") / str(pid) / "fd").iterdir()
               if f.is_symlink()]
        assert not [f for f in fds if "cryptfs-key" in f or "cryptfs-config" in f]


@needs("nbdkit", "qemu-io", "nbdinfo")
def test_trim_punches_only_where_discards_are_allowed(tmp_path, sock):
    image = tmp_path / "plain.img"
    image.write_bytes(b"\xff" * SIZE)
    key = tmp_path / "key"
    key.write_bytes(bytes(range(64)))
    options = ["--type", "plain", "--key-file", str(key)]
    with served(image, sock, *options, input=None):
        info = json.loads(run("nbdinfo", "--json", uri(sock)).stdout)["exports"][0]
        assert info["can_trim"] is False
    with served(image, sock, *options, "--allow-discards", input=None):
        info = json.loads(run("nbdinfo", "--json", uri(sock)).stdout)["exports"][0]
        assert info["can_trim"] is True
        assert qemu_io(uri(sock), "discard 1048576 1048576", "flush").returncode == 0
    data = image.read_bytes()
    assert data[1 << 20:2 << 20] == bytes(1 << 20) and data[:1 << 20] == b"\xff" * (1 << 20)


@needs("nbdkit", "nbdinfo")
def test_an_activated_venv_does_not_lend_nbdkit_its_python(tmp_path, sock):
    """A venv's python3 first on PATH (an activated venv) would give nbdkit's embedded Python
    that venv's base Python's standard library (here pyenv's, whose _ssl does not load in
    Debian's); serve hides it from nbdkit."""
    image = tmp_path / "plain.img"
    image.write_bytes(bytes(SIZE))
    key = tmp_path / "key"
    key.write_bytes(bytes(range(64)))
    venv_bin = str(Path(sys.executable).parent)
    result = subprocess.run([sys.executable, "-m", "cryptfs", "serve", image, "--socket", sock,
                             "--type", "plain", "--key-file", key, "--log-file",
                             tmp_path / "log"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}",
                                 "VIRTUAL_ENV": str(Path(venv_bin).parent)})
    assert result.returncode == 0, result.stderr
    try:
        assert run("nbdinfo", uri(sock)).returncode == 0
    finally:
        cryptfs("close", sock, check=True)


@needs("nbdkit", "qemu-img", "nbdinfo")
def test_foreground_serves_until_signalled(tmp_path, sock, runtime_dir):
    image = tmp_path / "plain.img"
    image.write_bytes(bytes(SIZE))
    key = tmp_path / "key"
    key.write_bytes(bytes(range(64)))
    serve = subprocess.Popen([sys.executable, "-m", "cryptfs", "serve", image, "--socket", sock,
                              "--type", "plain", "--key-file", key, "-f"], cwd=ROOT,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert "serves" in serve.stderr.readline()
        assert json.loads(run("nbdinfo", "--json", uri(sock)).stdout)["exports"][0][
            "export-size"] == SIZE
        assert len(entries(runtime_dir)) == 1
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
    finally:
        serve.kill()
    assert entries(runtime_dir) == [] and not sock.exists()


@needs("nbdkit", "fio")
@pytest.mark.slow
def test_fio_crc32c_verify_over_nbd_4_jobs_random_sizes(tmp_path, sock):
    image = tmp_path / "plain.img"
    image.write_bytes(bytes(64 << 20))
    key = tmp_path / "key"
    key.write_bytes(os.urandom(64))
    with served(image, sock, "--type", "plain", "--key-file", str(key), input=None):
        for rw in ("randwrite", "randrw"):
            done = run("fio", f"--name=verify-{rw}", "--ioengine=nbd", f"--uri={uri(sock)}",
                       f"--rw={rw}", "--bsrange=512-128k", "--bs_unaligned=1",
                       "--numjobs=4", "--size=12M", "--offset_increment=16M", "--iodepth=8",
                       "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
                       "--group_reporting=1", "--randrepeat=0")
            out = done.stdout.decode() + done.stderr.decode()
            assert done.returncode == 0 and "err= 0" in out and "verify:" not in out, out


# --- bad input: one line, and nothing left running -------------------------------------------

def one_line(result: subprocess.CompletedProcess, code: int, words: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr


@needs("nbdkit", "qemu-img")
def test_wrong_passphrase_leaves_no_server(tmp_path, sock, runtime_dir):
    image, _ = luks1_image(tmp_path, 5, 1 << 20)
    result = cryptfs("serve", image, "--socket", sock, "--key-file", "-", "--log-file",
                     tmp_path / "log", input=b"not the passphrase")
    one_line(result, 2, "No key available with this passphrase")
    assert not sock.exists() and entries(runtime_dir) == []
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline")
                if str(sock).encode() in p.read_bytes()]


@needs("nbdkit")
def test_a_socket_in_use_and_a_port_already_bound(tmp_path, sock):
    image = tmp_path / "plain.img"
    image.write_bytes(bytes(1 << 20))
    plain = ["--type", "plain", "--key-file", "/dev/null"]
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock))
        listener.listen()
        one_line(cryptfs("serve", image, "--socket", sock, *plain), 5, f"socket {sock} is in use")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        one_line(cryptfs("serve", image, "--port", port, *plain), 5,
                 f"cannot listen on 127.0.0.1:{port}")


@needs("nbdkit")
def test_a_dead_servers_socket_is_taken_over(tmp_path, sock):
    image = tmp_path / "plain.img"
    image.write_bytes(bytes(1 << 20))
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(sock))            # bound, never listening: what a killed server leaves
    key = tmp_path / "key"
    key.write_bytes(bytes(range(64)))
    with served(image, sock, "--type", "plain", "--key-file", str(key), input=None):
        pass
    assert not sock.exists()


def test_nbdkit_or_its_python_plugin_missing_names_the_package(tmp_path, sock):
    image = tmp_path / "plain.img"
    image.write_bytes(bytes(1 << 20))
    bare = tmp_path / "bin"
    bare.mkdir()
    argv = [sys.executable, "-m", "cryptfs", "serve", str(image), "--socket", str(sock),
            "--type", "plain", "--key-file", "/dev/null"]

    def serve() -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PATH": str(bare)})
    one_line(serve(), 1, "nbdkit is not installed (apt-get install nbdkit nbdkit-plugin-python)")
    fake = bare / "nbdkit"
    fake.write_text("#!/bin/sh\necho \"nbdkit: error: cannot open plugin 'python'\" >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    one_line(serve(), 1, "nbdkit's Python plugin is not installed (apt-get install nbdkit "
                         "nbdkit-plugin-python)")


@needs("nbdkit")
@pytest.mark.parametrize("options, words", [
    (["--backend", "engine"], "backend engine is asynchronous"),
    (["--bind", "127.0.0.1"], "--bind goes with --port"),
    (["--set", "backend.nope.x=1"], "[backend.nope] given"),
])
def test_refused_before_the_passphrase(tmp_path, sock, options, words):
    image = tmp_path / "plain.img"
    image.write_bytes(bytes(1 << 20))
    # no key file: reaching the prompt would read this as the passphrase and go on
    one_line(cryptfs("serve", image, "--socket", sock, "--type", "plain", *options,
                     input=b"passphrase\n"), 1, words)


def test_where_to_listen_is_checked():
    from cryptfs.errors import ConfigError
    from cryptfs.tools.nbd import Listen
    for bad in [dict(), dict(socket="/s", port=1), dict(port=0), dict(port=70000),
                dict(port=10809, bind="localhost"), dict(socket="/" + "x" * 120)]:
        with pytest.raises(ConfigError):
            Listen(**bad)
    assert Listen(port=10809).uri() == "nbd://127.0.0.1:10809" and Listen(port=1).loopback
    assert Listen(port=10809, bind="::1").address == "[::1]:10809"
    assert not Listen(port=10809, bind="0.0.0.0").loopback
    assert Listen(socket="/run/x.sock").uri(tls=True) == "nbds+unix:///?socket=/run/x.sock"


def test_the_config_reaches_the_plugin_as_given():
    from cryptfs.core.config import apply_setting, load
    from cryptfs.tools.nbd import decode_config, encode_config
    config = load(None)
    config.set("device", "type", "plain")
    config.set("crypto", "sector_size", 4096)
    apply_setting(config, "pipeline.mode=per_sector")
    apply_setting(config, "backend.multidu.split_bytes=65536")
    again = decode_config(json.loads(json.dumps(encode_config(config))))
    assert again == config and again.explicit == config.explicit


# --- alongside the rest of cryptfs -----------------------------------------------------------

@needs("nbdkit", "qemu-img")
def test_key_commands_and_open_refuse_a_served_image(tmp_path, sock):
    image, _ = luks1_image(tmp_path, 5, 1 << 20)
    new_key = tmp_path / "new"
    new_key.write_text("another passphrase")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with served(image, sock):
        held = f"export {sock} (pid {status_of(sock)['pid']})"
        one_line(cryptfs("luksAddKey", image, new_key, input=PASSPHRASE.encode()), 5, held)
        one_line(cryptfs("open", image, mnt, "--key-file", "-", input=PASSPHRASE.encode()),
                 5, held)
        one_line(cryptfs("serve", image, "--socket", sock.parent / "second.sock",
                         "--key-file", "-", input=PASSPHRASE.encode()), 5, held)


@needs("nbdkit", "unshare")
def test_status_lists_exports_beside_mounts_and_close_all_stops_them(tmp_path, sock):
    image, image2 = tmp_path / "a.img", tmp_path / "b.img"
    image.write_bytes(bytes(1 << 20))
    image2.write_bytes(bytes(1 << 20))
    key = tmp_path / "key"
    key.write_bytes(bytes(range(64)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = f"{sys.executable} -m cryptfs"
    plain = f"--type plain --key-file {key} --log-file {tmp_path / 'log'}"
    # a private mount namespace without cryptfs mounts: close --all reaches only these exports
    script = f"""
        set -e
        for m in $(awk '$0 ~ / - fuse.cryptfs / {{print $5}}' /proc/self/mountinfo); do
            umount -l "$m"; done
        {cli} serve {image} --socket {sock} {plain}
        {cli} serve {image2} --port {port} -r --backend software {plain}
        {cli} status
        echo ---
        {cli} status --json
        echo ---
        {cli} status 127.0.0.1:{port}
        {cli} close --all
        {cli} status
    """
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                             script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    table, listed, shown = result.stdout.split("---\n")
    rows = [line.split() for line in table.splitlines()]
    assert rows[0] == ["EXPORT", "IMAGE", "TYPE", "PID", "BACKEND", "LOG"]
    assert [r[:3] for r in rows[1:]] == [[str(sock), str(image), "plain"],
                                        [f"127.0.0.1:{port}", str(image2), "plain,ro"]]
    assert {d["export"] for d in json.loads(listed)} == {str(sock), f"127.0.0.1:{port}"}
    assert f"nbd://127.0.0.1:{port} is served (read-only)." in shown
    assert "software (per_sector" in shown or "software (multi_du" in shown
    assert shown.rstrip().endswith("no cryptfs device is open")
    assert not sock.exists()


def test_bench_nbd_says_where_a_requests_time_goes():
    from types import SimpleNamespace

    from cryptfs.tools.bench import fio, nbd
    jobs = [fio.Job("rand-read-4k", "randread", "4k"),
            fio.Job("rand-read-4k-4jobs", "randread", "4k", numjobs=4)]
    iops = {nbd.CRYPTFS: 8000, nbd.QEMU: 12500, nbd.NBDKIT_LUKS: 12500,
            nbd.PYTHON_CEILING: 10000, nbd.C_CEILING: 20000}
    runs = {(job.name, label): [{"bw": n * 4096, "iops": n, "cpu_per_gib": 2.0}]
            for job in jobs for label, n in iops.items()}
    summary = {job.name: nbd._medians(job, list(iops), runs) for job in jobs}
    assert summary["rand-read-4k-4jobs"]["targets"][nbd.CRYPTFS]["us_per_request"] is None
    assert summary["rand-read-4k"]["targets"][nbd.CRYPTFS]["vs_qemu"] == 0.64
    text = nbd.markdown(summary, jobs, [SimpleNamespace(label=label) for label in iops],
                        {"command": "cryptfs bench nbd", "date": "today", "machine": "here",
                         "runtime_s": 3, "reps": 3})
    assert "| rand-read-4k | cryptfs serve multidu/multi_du | 8.0k (8.0k–8.0k) | 0.64 | 125 |" \
        in text
    assert ("125 µs a request through cryptfs serve, 80 through nbdkit's C LUKS filter" in text
            and "its Python costs 50 µs a request, cryptfs's stack (crypto included) 25 µs "
                "more, where C crypto adds 30 µs." in text)
    assert "rand-read-4k-4jobs:" not in text
