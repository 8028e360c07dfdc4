"""The nbdkit plugin behind ``cryptfs serve``: nbdkit's Python plugin loads this file (as its
``__main__``) and calls the functions below by name; :mod:`cryptfs.tools.nbd` starts it.

nbdkit's callbacks, in the order they come:

* ``config`` — the parameters (:data:`cryptfs.tools.nbd.PARAMETERS`, none of them secret);
  ``sitedirs`` puts this installation first on ``sys.path``, so nbdkit's interpreter imports the
  same cryptfs, cryptography and compiled core as the ``cryptfs`` command;
* ``config_complete`` — checks it imports the cryptfs package ``serve`` runs (``package``);
* ``get_ready`` — before nbdkit listens: reads the config and the key material from their
  inherited memfds (truncated as soon as read) and assembles the stack
  (:func:`cryptfs.stack.assemble`, as ``cryptfs open`` and the Python API do: key slots, locks,
  backend and its self-test).  Any failure is reported on ``reportfd`` and nbdkit exits having
  never listened;
* ``after_fork`` — listening: the export's entry is published (``cryptfs status``) and kept
  current each second, and ``ready`` is reported;
* ``open`` / ``close`` per connection, and the requests: ``pread``, ``pwrite``, ``flush``,
  ``trim``, ``zero``, each straight onto the synchronous device;
* ``cleanup`` — after SIGTERM (``cryptfs close``) and the last request in flight: flush, wipe
  the key (:meth:`cryptfs.stack.Stack.close`), remove the entry and the socket.

Requests run in parallel (``THREAD_MODEL_PARALLEL``, nbdkit's worker threads): the device is
thread-safe, overlapping read-modify-writes are ordered by its range lock, and the native core
and ``pread``/``pwrite`` release the GIL.  Multi-conn is advertised: every connection shares
this one stack in this one process, with no cache of its own, so a flush on any connection
(an fsync of the image) makes every write any connection completed durable.  Errors reach
the client as the errno the device names (EROFS, ENOSPC, EOPNOTSUPP...), EIO otherwise.
"""

import ctypes
import errno
import functools
import json
import logging
import os
import site
import sys
import threading
import time

import nbdkit

API_VERSION = 2

log = logging.getLogger("cryptfs.nbd")
_params: dict[str, str] = {}
_export = None          # the Export, from get_ready on
_device = None          # its device, for the requests
_debug = False          # serve --debug: full tracebacks in the log
_ZEROS = memoryview(bytes(1 << 20))


# --- reporting to `cryptfs serve` --------------------------------------------------------------

def _report(message: dict) -> None:
    """Send ``serve`` the one line it waits for, once."""
    fd = int(_params.pop("reportfd", -1))
    if fd >= 0:
        os.write(fd, json.dumps({**message, "pid": os.getpid()}).encode() + b"\n")
        os.close(fd)


def _reported(callback):
    """A setup callback whose failure ``serve`` is told about (by the error's class name and
    message) before nbdkit gives up."""
    @functools.wraps(callback)
    def run():
        try:
            callback()
        except BaseException as e:
            _report({"error": type(e).__name__, "message": str(e)})
            if hasattr(e, "exit_code") and not _debug:
                # a CryptfsError: the user's mistake, not ours — nbdkit logs one line of it
                raise RuntimeError(str(e)) from None
            raise
    return run


# --- setup -----------------------------------------------------------------------------------

def _add_sitedirs(dirs: list[str]) -> None:
    """Put ``dirs`` (with what their .pth files add) before everything else on sys.path."""
    before = list(sys.path)
    for d in dirs:
        site.addsitedir(d)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before


def config(key: str, value: str) -> None:
    if key == "sitedirs":
        _add_sitedirs([d for d in value.split(os.pathsep) if d])
    _params[key] = value


@_reported
def config_complete() -> None:
    from cryptfs.tools.nbd import PARAMETERS
    missing = [p for p in PARAMETERS if p not in _params]
    unknown = [p for p in _params if p not in PARAMETERS]
    if missing or unknown:
        raise ValueError(f"parameters missing: {missing}, unknown: {unknown}")
    import cryptfs
    found = os.path.dirname(os.path.abspath(cryptfs.__file__))
    if found != _params["package"]:
        from cryptfs.errors import DependencyError
        raise DependencyError(f"nbdkit's Python imports cryptfs from {found}, not "
                              f"{_params['package']}")


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def _take(fd: int) -> bytearray:
    """An inherited memfd's contents; the memfd is emptied (for every holder) and closed."""
    buffer = bytearray(os.fstat(fd).st_size)
    view, got = memoryview(buffer), 0
    while got < len(buffer):
        n = os.preadv(fd, [view[got:]], got)
        if not n:
            break
        got += n
    os.ftruncate(fd, 0)
    os.close(fd)
    return buffer


@_reported
def get_ready() -> None:
    global _export, _device, _debug
    from cryptfs.crypto.keys import Secret
    settings = json.loads(_take(int(_params["configfd"])))
    _debug = settings["debug"]
    logging.basicConfig(level=logging.DEBUG if settings["debug"] else logging.WARNING,
                        format="%(asctime)s cryptfs[%(process)d] %(levelname)s %(name)s: "
                               "%(message)s")
    secret = Secret()
    secret.buffer = _take(int(_params["keyfd"]))
    try:
        _export = Export(_params["image"], settings, secret)
    finally:
        secret.wipe()
    _device = _export.stack.device


@_reported
def after_fork() -> None:
    _export.publish()
    _report({"ready": True, "entry": _export.entry()})


def cleanup() -> None:
    _sweep()
    if _export is not None:
        _export.close()


class Export:
    """The stack behind the export, its connections and its entry."""

    def __init__(self, image: str, settings: dict, secret):
        from cryptfs.core.volume import KeySource
        from cryptfs.errors import ConfigError
        from cryptfs.stack import assemble
        from cryptfs.tools import nbd
        config = nbd.decode_config(settings["config"])
        keys = KeySource(config.crypto.key_file, given=secret)
        try:
            nbd.refuse_asynchronous(config)
            self.stack = assemble(image, config, keys)
        finally:
            keys.wipe()
        if self.stack.backend.caps.asynchronous:
            self.stack.close()
            raise ConfigError(f"backend {self.stack.backend.name} is asynchronous: it serves "
                              "only the FUSE device (cryptfs open)")
        self.settings = settings
        self.started = time.time()
        self.connections = self.connections_total = 0
        self._lock = threading.Lock()
        self._stopping = False
        self._wake = threading.Event()          # a connection came or went: publish now
        self._refresher: threading.Thread | None = None
        self._published = ""

    def entry(self) -> dict:
        """What ``cryptfs status`` shows of this export."""
        s, settings = self.stack, self.settings
        v, g, device = s.volume, s.volume.geometry, s.device
        return {"pid": os.getpid(), "started": self.started,
                **{k: settings[k] for k in ("address", "socket", "uri", "tls", "threads",
                                            "log_file")},
                "image": os.path.abspath(s.image.path), "header": s.config.device.header or None,
                "type": v.kind, "cipher": str(v.spec), **v.info,
                "sector_size": g.sector_size, "iv_large_sectors": g.iv_large_sectors,
                "payload_offset": g.payload_offset, "size": g.size,
                "read_only": device.read_only, "allow_discards": device.allow_discards,
                "backend": s.backend.name, "backend_refused": s.refused,
                "crypto_path": "multi_du" if s.converter.multi_du else "per_sector",
                "crypto_path_reason": s.converter.reason,
                "thread_model": "parallel", "multi_conn": True,
                "connections": self.connections, "connections_total": self.connections_total,
                "pinned_thread_states": len(_pinned),
                "counters": s.stats.snapshot(), "backend_stats": s.backend.statistics()}

    def publish(self) -> None:
        """Write the entry now, then again each second something changed, and at once when
        a connection comes or goes."""
        self._write()
        self._refresher = threading.Thread(target=self._refresh, name="cryptfs-entry",
                                           daemon=True)
        self._refresher.start()

    def _write(self) -> None:
        from cryptfs.tools.nbd import write_entry
        entry = self.entry()
        text = json.dumps({**entry, "started": 0})
        if text != self._published:
            write_entry(entry)
            self._published = text

    def _refresh(self) -> None:
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._write()
            except OSError as e:
                log.warning("cannot update the export's entry: %s", e)

    def connect(self) -> int:
        with self._lock:
            self.connections += 1
            self.connections_total += 1
            self._wake.set()
            return self.connections_total

    def disconnect(self) -> None:
        with self._lock:
            self.connections -= 1
            self._wake.set()

    def close(self) -> None:
        """Flush, take the stack apart (wiping the key), and remove what was published."""
        from cryptfs.tools.nbd import remove_entry
        self._stopping = True
        self._wake.set()
        if self._refresher:
            self._refresher.join()
        try:
            self.stack.device.flush()
        except Exception:
            log.exception("flushing %s failed", self.stack.image.path)
        self.stack.close()
        if self._refresher:             # only an export that listened owns its socket
            remove_entry(os.getpid())
            socket = self.settings["socket"]
            if socket and os.path.exists(socket):
                os.unlink(socket)


# --- connections and requests ----------------------------------------------------------------

# --- nbdkit's worker threads and their Python thread states -----------------------------------
# nbdkit's Python plugin takes the GIL for each callback with PyGILState_Ensure() and gives it
# back with PyGILState_Release().  On a thread Python did not start, that creates a Python
# thread state for every request and deletes it afterwards, and with it what the thread keeps
# in threading.local: the device's page-aligned ciphertext buffer, mapped and unmapped again
# for every request.  Measured here: a 4 KiB read took ~170 µs instead of ~100.  So each worker
# thread's state is pinned on its first request (one PyGILState_Ensure more, never released:
# nbdkit's Release then only lets the GIL go), and the pinned states of threads that have ended
# — nbdkit's workers live as long as their connection — are deleted whenever a connection
# comes or goes, and at cleanup.

_api = ctypes.pythonapi
_api.PyThreadState_Get.restype = ctypes.c_void_p
_api.PyThreadState_Clear.argtypes = _api.PyThreadState_Delete.argtypes = [ctypes.c_void_p]
_pinned: dict[int, int] = {}        # native thread id → its pinned PyThreadState*
_sweeping = threading.Lock()        # one sweep at a time: a state is deleted once


def _pin() -> None:
    thread = threading.get_native_id()
    if thread not in _pinned:
        _api.PyGILState_Ensure()
        _pinned[thread] = _api.PyThreadState_Get()


def _sweep() -> None:
    """Delete the pinned thread states of threads that have ended (under the GIL, as every
    callback runs: ctypes.pythonapi keeps it)."""
    with _sweeping:
        for thread, state in list(_pinned.items()):
            if not os.path.exists(f"/proc/self/task/{thread}"):
                del _pinned[thread]
                _api.PyThreadState_Clear(state)
                _api.PyThreadState_Delete(state)


def _errno(request):
    """A request on a pinned thread, whose failure the client sees as the errno the device
    names (EIO if none)."""
    @functools.wraps(request)
    def run(*args):
        _pin()
        try:
            return request(*args)
        except Exception as e:
            log.warning("%s: %s", request.__name__, e)
            nbdkit.set_error(getattr(e, "errno", None) or errno.EIO)
            raise
    return run


def open(readonly: bool):
    _sweep()
    return _export.connect()


def close(h) -> None:
    _export.disconnect()
    _sweep()


def export_description(h) -> str:
    s = _export.stack
    return f"cryptfs: {s.image.path} ({s.volume.kind}, {s.volume.spec})"


def get_size(h) -> int:
    return _device.size


def block_size(h):
    """Any size and alignment works (read-modify-write inside); whole data units on page
    boundaries avoid it.  At most 1 MiB a request: each worker thread keeps a ciphertext
    buffer of its largest request."""
    return 1, max(4096, _device.geometry.sector_size), 1 << 20


def is_rotational(h) -> bool:
    return False


def can_write(h) -> bool:
    return not _device.read_only


def can_flush(h) -> bool:
    return True


def can_trim(h) -> bool:
    return _device.allow_discards and not _device.read_only


def can_zero(h) -> bool:
    return not _device.read_only


def can_fast_zero(h) -> bool:
    return False            # zeros are written encrypted: never faster than a write


def can_fua(h):
    return nbdkit.FUA_NATIVE


def can_multi_conn(h) -> bool:
    return True


@_errno
def pread(h, buf, offset: int, flags: int) -> None:
    data = _device.read(offset, len(buf))
    if len(data) != len(buf):
        raise OSError(errno.EIO, f"short read at {offset}")
    buf[:] = data
    _device.stats.add("reads")
    _device.stats.add("bytes_read", len(buf))


@_errno
def pwrite(h, buf, offset: int, flags: int) -> None:
    if _device.write(offset, buf) != len(buf):
        raise OSError(errno.ENOSPC, f"short write at {offset}")
    _device.stats.add("writes")
    _device.stats.add("bytes_written", len(buf))
    if flags & nbdkit.FLAG_FUA:
        _device.flush()


@_errno
def flush(h, flags: int) -> None:
    _device.flush()


@_errno
def trim(h, count: int, offset: int, flags: int) -> None:
    _device.discard(offset, count)
    if flags & nbdkit.FLAG_FUA:
        _device.flush()


@_errno
def zero(h, count: int, offset: int, flags: int) -> None:
    """Zeros, encrypted: a punched hole would read back as the decryption of zeros, so
    MAY_TRIM is not taken up even where discards are allowed."""
    end = offset + count
    while offset < end:
        n = min(end - offset, len(_ZEROS))
        _device.write(offset, _ZEROS[:n])
        offset += n
    _device.stats.add("zeroes")
    _device.stats.add("bytes_zeroed", count)
    if flags & nbdkit.FLAG_FUA:
        _device.flush()
