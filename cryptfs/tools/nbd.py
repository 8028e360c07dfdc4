"""``cryptfs serve``, the server side: the decrypted device as an NBD export, served by nbdkit
running :mod:`cryptfs.tools.nbd_plugin` in its embedded Python.

nbdkit is the wire (the NBD protocol, TLS, connections, threads); the plugin assembles the same
stack ``cryptfs open`` and the Python API do (:func:`cryptfs.stack.assemble`) inside nbdkit's
process and answers its requests with the synchronous device.  This module does what happens
before and around that, in the ``cryptfs`` process:

* :func:`check_nbdkit`, :meth:`Listen.check`, :meth:`Tls.check` and :func:`probe` refuse what
  cannot work before any passphrase is asked for — :func:`probe` runs the real assembly with a
  key source that stops it where the key would be read, so every check ``open`` makes (backend
  and options, image lock, header validation) is made, in the same order, with the same words;
* :func:`launch` starts nbdkit (never a secret on its command line: the key material goes in an
  inherited memfd the plugin reads and truncates, the config in another) and waits on a pipe for
  the plugin's one-line report — ready, listening, or the error to raise here;
* :func:`exports` and :func:`stop` are ``status`` and ``close`` for exports: each running export
  has an entry (``<pid>.json``, written and kept current by the plugin) in :func:`exports_dir`.
"""

import ipaddress
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from urllib.parse import quote

import cryptfs.errors as error_classes
from cryptfs.core.config import Config
from cryptfs.core.volume import KeySource
from cryptfs.crypto.keys import Secret
from cryptfs.errors import BusyError, ConfigError, CryptfsError, DependencyError

#: the file nbdkit's Python plugin loads
PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nbd_plugin.py")
INSTALL = "apt-get install nbdkit nbdkit-plugin-python"
#: nbdkit's worker threads per connection: one per CPU.  nbdkit's own default, 16, measured
#: worse on 2 CPUs for every job (4 KiB random reads at QD16: 10.5k IOPS against 12.8k): threads
#: beyond the CPUs only queue for the GIL, and the multidu backend splits a large bio over the
#: CPUs itself
DEFAULT_THREADS = os.cpu_count() or 1
#: the plugin's parameters (key=value on nbdkit's command line; none of them secret)
PARAMETERS = ("sitedirs", "package", "image", "configfd", "keyfd", "reportfd")


# --- where the export listens, and TLS -----------------------------------------------------

@dataclass(frozen=True)
class Tls:
    """nbdkit's TLS, required of every client when set: a PSK file or an X.509 directory."""
    psk: str | None = None
    certificates: str | None = None

    @property
    def kind(self) -> str | None:
        return "psk" if self.psk else "x509" if self.certificates else None

    def check(self) -> None:
        if self.psk and self.certificates:
            raise ConfigError("give --tls-psk or --tls-certificates, not both")
        if self.psk and not os.access(self.psk, os.R_OK):
            raise ConfigError(f"--tls-psk {self.psk}: cannot read it (a file of "
                              "'username:hexkey' lines, as psktool writes)")
        if self.certificates:
            missing = [f for f in ("ca-cert.pem", "server-cert.pem", "server-key.pem")
                       if not os.access(os.path.join(self.certificates, f), os.R_OK)]
            if missing:
                raise ConfigError(f"--tls-certificates {self.certificates}: no readable "
                                  f"{', '.join(missing)} there")

    def nbdkit_args(self) -> list[str]:
        if self.psk:
            return ["--tls=require", f"--tls-psk={os.path.abspath(self.psk)}"]
        if self.certificates:
            return ["--tls=require", f"--tls-certificates={os.path.abspath(self.certificates)}"]
        return ["--tls=off"]


@dataclass(frozen=True)
class Listen:
    """A Unix socket, or a TCP port on one address (loopback unless told otherwise)."""
    socket: str | None = None
    port: int | None = None
    bind: str = "127.0.0.1"

    def __post_init__(self):
        if (self.socket is None) == (self.port is None):
            raise ConfigError("serve needs --socket PATH or --port N (one of them)")
        if self.socket:
            object.__setattr__(self, "socket", os.path.abspath(self.socket))
            if len(os.fsencode(self.socket)) > 107:
                raise ConfigError(f"socket path {self.socket} is too long (107 bytes at most)")
        else:
            if not 0 < self.port < 65536:
                raise ConfigError(f"--port {self.port}: a TCP port is 1 to 65535")
            try:
                ipaddress.ip_address(self.bind)
            except ValueError:
                raise ConfigError(f"--bind {self.bind}: an IPv4 or IPv6 address of this "
                                  "machine") from None

    @property
    def address(self) -> str:
        """What ``status`` shows and ``close`` takes: the socket path or ADDR:PORT."""
        if self.socket:
            return self.socket
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{host}:{self.port}"

    def uri(self, tls: bool = False) -> str:
        """The NBD URI clients use (qemu-img, nbdcopy, fio's nbd engine)."""
        scheme = "nbds" if tls else "nbd"
        if self.socket:
            return f"{scheme}+unix:///?socket={quote(self.socket, safe='/')}"
        return f"{scheme}://{self.address}"

    @property
    def loopback(self) -> bool:
        return bool(self.socket) or ipaddress.ip_address(self.bind).is_loopback

    def where(self) -> str:
        """Who can reach it, in words."""
        if self.socket:
            return "a Unix socket: this machine only"
        if self.loopback:
            return f"{self.bind} only: this machine (--bind ADDR listens elsewhere)"
        return f"{self.bind}: the network"

    def check(self) -> None:
        """BusyError if something listens there already; a socket file nobody listens on (a
        server that died) is removed."""
        if self.socket:
            self._check_socket()
            return
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as nbdkit binds
            try:
                s.bind((self.bind, self.port))
            except OSError as e:
                raise BusyError(f"cannot listen on {self.address}: {e.strerror}"
                                f"{_held_by(self.address)}") from None

    def _check_socket(self) -> None:
        path = self.socket
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise ConfigError(f"socket {path}: directory {parent} does not exist")
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise BusyError(f"socket {path}: a file that is not a socket is there")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)             # nobody listens: a dead server's leftover
                return
            except OSError as e:
                raise BusyError(f"socket {path}: {e.strerror}") from None
        raise BusyError(f"socket {path} is in use: a server listens there{_held_by(path)}")


def _held_by(address: str) -> str:
    for entry in exports():
        if address in (entry["address"], entry.get("socket")):
            return f" (cryptfs export, pid {entry['pid']})"
    return ""


# --- before the passphrase -------------------------------------------------------------------

def environment() -> dict[str, str]:
    """nbdkit's environment: ours, without what would steer its embedded Python to another
    Python's standard library.  With no program name of its own, that Python takes its prefix
    from the first ``python3`` on PATH — a venv's, or another build's, whose compiled standard
    modules do not load in it (seen: with an activated venv of pyenv's 3.11.7, Debian's 3.11.2
    imported pyenv's ``_ssl`` and failed).  So PATH keeps only the directories without a
    Python (nbdkit is run by its full path and needs none), and PYTHONHOME, PYTHONPATH and
    VIRTUAL_ENV go: the plugin is given cryptfs's site directories itself."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONEXECUTABLE")}
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any(os.path.exists(os.path.join(d, name)) for name in PYTHONS)]
    env["PATH"] = os.pathsep.join(path) or os.devnull
    return env


PYTHONS = ("python3", "python", f"python{sys.version_info[0]}.{sys.version_info[1]}")


def nbdkit_path() -> str:
    """Where nbdkit is; DependencyError naming the package if it is not installed."""
    found = shutil.which("nbdkit")
    if not found:
        raise DependencyError(f"nbdkit is not installed ({INSTALL})")
    return found


def check_nbdkit() -> None:
    """DependencyError naming the package if nbdkit or its Python plugin is missing, or if that
    plugin embeds a Python whose version cannot load this installation's compiled modules."""
    done = subprocess.run([nbdkit_path(), "python", "--dump-plugin"], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, env=environment())
    if done.returncode:
        raise DependencyError(f"nbdkit's Python plugin is not installed ({INSTALL})")
    fields = dict(line.partition("=")[::2] for line in done.stdout.splitlines())
    theirs = fields.get("python_version", "").split(".")[:2]
    ours = [str(n) for n in sys.version_info[:2]]
    if theirs != ours:
        raise DependencyError(
            f"nbdkit's Python plugin embeds Python {'.'.join(theirs) or '?'}, but cryptfs is "
            f"installed for Python {'.'.join(ours)}: its compiled modules cannot load there "
            f"(install cryptfs in a venv of Python {'.'.join(theirs)})")


def refuse_asynchronous(config: Config) -> None:
    """The export serves the synchronous device; an asynchronous backend needs the trio plane."""
    if config.backend.name == "engine":
        raise ConfigError("backend engine is asynchronous: it serves only the FUSE device "
                          "(cryptfs open)")


class _KeyWanted(BaseException):
    """Raised where the assembly first reads the key (BaseException: no handler in between
    mistakes it for a failure of its own)."""


class _Probe(KeySource):
    """A key source that stops the assembly where it would read the key, noting how the
    format asked for it (plain mode reads no more of a key file than the key)."""

    asked: tuple = ((), {})

    def read(self, *args, **kwargs) -> Secret:
        self.asked = (args, kwargs)
        raise _KeyWanted


def probe(image: str, config: Config) -> tuple[tuple, dict]:
    """Everything ``assemble`` checks before it reads a key — backend and options, the image
    and its locks, the header — without a key: CryptfsError as ``open`` raises it.  Returns
    the arguments the format reads the key with (for :meth:`KeySource.read`)."""
    from cryptfs.stack import assemble
    keys = _Probe()
    try:
        assemble(image, config, keys).close()           # a format that needs no key
    except _KeyWanted:
        pass
    return keys.asked


# --- launching nbdkit ------------------------------------------------------------------------

def package_dir() -> str:
    """The directory of the cryptfs package running here (the plugin checks it imports that
    one)."""
    import cryptfs
    return os.path.dirname(os.path.abspath(cryptfs.__file__))


def sitedirs() -> list[str]:
    """Where nbdkit's Python finds this installation: the site directories of the Python
    running cryptfs (their .pth files install an editable install's finder) and the directory
    cryptfs was imported from.  nbdkit's interpreter is another build of the same Python
    version (checked by :func:`check_nbdkit`), so their compiled modules load there."""
    paths = sysconfig.get_paths()
    found = [paths["purelib"], paths["platlib"], os.path.dirname(package_dir())]
    return list(dict.fromkeys(p for p in found if os.path.isdir(p)))


def encode_config(config: Config) -> dict:
    """The config as JSON: the keys a file, flag or --set gave, and the backend options."""
    return {"set": [[section, key, getattr(getattr(config, section), key)]
                    for section, key in sorted(config.explicit)],
            "backend_options": config.backend.options}


def decode_config(data: dict) -> Config:
    """The Config :func:`encode_config` describes, checked again key by key."""
    config = Config()
    for section, key, value in data["set"]:
        config.set(section, key, value)
    config.backend.options = data["backend_options"]
    return config


def _memfd(name: str, data: bytes | bytearray) -> int:
    """An anonymous in-memory file holding ``data``, for a child to inherit: no name in any
    file system, gone with its last descriptor."""
    fd = os.memfd_create(name)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclass
class Server:
    """A running export: what its plugin reported once listening (``entry``: what ``status``
    shows, nbdkit's pid included), and nbdkit's process when it is our child (foreground)."""
    entry: dict
    process: subprocess.Popen | None = None


def launch(image: str, config: Config, secret: Secret, listen: Listen, tls: Tls, *,
           threads: int = DEFAULT_THREADS, log_file: str | None = None,
           debug: bool = False) -> Server:
    """Start nbdkit serving ``image`` and return once it listens; CryptfsError (the plugin's
    own, e.g. WrongPassphrase, or nbdkit's last words) if it does not — and then no nbdkit is
    left running.

    With a ``log_file`` nbdkit is detached (:func:`_detached`) and logs there; without one it
    is this process's child, on its standard error, and exits with it."""
    settings = {"config": encode_config(config), "address": listen.address,
                "socket": listen.socket, "uri": listen.uri(bool(tls.kind)), "tls": tls.kind,
                "threads": threads, "log_file": log_file, "debug": debug}
    key_fd = _memfd("cryptfs-key", secret.buffer)
    config_fd = _memfd("cryptfs-config", json.dumps(settings).encode())
    report_r, report_w = os.pipe()
    argv = [nbdkit_path(), "--foreground",
            *(["--exit-with-parent"] if log_file is None else []),
            *(["-U", listen.socket] if listen.socket else ["-i", listen.bind, "-p",
                                                         str(listen.port)]),
            "-t", str(threads), *tls.nbdkit_args(),
            *(["--readonly"] if config.device.read_only else []),
            *(["--verbose"] if debug else []),
            "python", PLUGIN, f"sitedirs={os.pathsep.join(sitedirs())}",
            f"package={package_dir()}", f"image={os.path.abspath(image)}",
            f"configfd={config_fd}", f"keyfd={key_fd}", f"reportfd={report_w}"]
    inherited = (key_fd, config_fd, report_w)
    process, log_start = None, 0
    try:
        if log_file is None:
            process = subprocess.Popen(argv, pass_fds=inherited, stdin=subprocess.DEVNULL,
                                       env=environment())
        else:
            log_start = _detached(argv, inherited, log_file)
    finally:
        for fd in inherited:
            os.close(fd)
    report = _read_report(report_r)
    if report.get("ready"):
        return Server(report["entry"], process)
    if process is not None:
        process.wait()
    elif report.get("pid"):
        from cryptfs.fuse.unmount import wait_exit
        wait_exit(report["pid"], 30)
    raise _error(report, log_file, log_start)


def _detached(argv: list[str], inherited: tuple[int, ...], log_file: str) -> int:
    """Run ``argv`` as an orphan in a session of its own, standard input /dev/null, output
    appended to ``log_file``; returns where the log stood before.

    nbdkit (1.32 as Debian builds it) asks for SIGTERM when its parent dies, as if given
    --exit-with-parent, so it is not started as our child: an intermediate process forks it
    and exits, and it executes nbdkit only once it has been reparented."""
    log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    start = os.fstat(log).st_size
    null = os.open(os.devnull, os.O_RDONLY)
    intermediate = os.fork()
    if intermediate == 0:
        try:
            os.setsid()
            me = os.getpid()
            if os.fork():
                os._exit(0)
            while os.getppid() == me:
                time.sleep(0.001)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            for fd in inherited:
                os.set_inheritable(fd, True)
            os.execve(argv[0], argv, environment())
        finally:
            os._exit(127)
    os.close(log)
    os.close(null)
    os.waitpid(intermediate, 0)
    return start


def _read_report(fd: int) -> dict:
    """The plugin's one JSON line (``{}`` if nbdkit ended without one)."""
    data = b""
    with os.fdopen(fd, "rb") as pipe:
        while not data.endswith(b"\n"):
            chunk = pipe.read1(4096)
            if not chunk:
                break
            data += chunk
    try:
        return json.loads(data) if data.strip() else {}
    except ValueError:
        return {}


def _error(report: dict, log_file: str | None, log_start: int) -> CryptfsError:
    """The exception the plugin reported, rebuilt by its name; or nbdkit's own last error."""
    if "error" in report:
        kind = getattr(error_classes, report["error"], None)
        if isinstance(kind, type) and issubclass(kind, CryptfsError):
            return kind(report["message"])
        return CryptfsError(f"nbdkit's cryptfs plugin failed: {report['error']}: "
                            f"{report['message']}")
    last = ""
    if log_file:
        with open(log_file, "rb") as f:
            f.seek(log_start)
            lines = [line for line in f.read().decode(errors="replace").splitlines()
                     if "error" in line]
        last = lines[-1].strip() if lines else ""
    where = f": {last}" if last else (f"; see {log_file}" if log_file else "")
    return CryptfsError(f"nbdkit exited before the export was ready{where}")


# --- running exports: status and close -------------------------------------------------------

def exports_dir() -> str:
    """Where running exports are listed: ``$CRYPTFS_RUNTIME_DIR``, else ``/run/cryptfs`` as
    root, else ``$XDG_RUNTIME_DIR/cryptfs`` (``/tmp/cryptfs-UID``) — then ``exports/``."""
    base = os.environ.get("CRYPTFS_RUNTIME_DIR")
    if not base:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        base = "/run/cryptfs" if os.geteuid() == 0 else \
            os.path.join(xdg, "cryptfs") if xdg else f"/tmp/cryptfs-{os.getuid()}"
    return os.path.join(base, "exports")


def entry_path(pid: int) -> str:
    return os.path.join(exports_dir(), f"{pid}.json")


def write_entry(entry: dict) -> None:
    """Publish (or update) an export's entry, atomically."""
    os.makedirs(exports_dir(), mode=0o700, exist_ok=True)
    path = entry_path(entry["pid"])
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        json.dump(entry, f)
    os.replace(temporary, path)


def remove_entry(pid: int) -> None:
    try:
        os.unlink(entry_path(pid))
    except FileNotFoundError:
        pass


def _serving(pid: int) -> bool:
    """True while ``pid`` is a live nbdkit (not a zombie, not a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            head, _, tail = f.read().rpartition(")")
    except OSError:
        return False
    return head.endswith("(nbdkit") and tail.split()[0] not in ("Z", "X")


def exports() -> list[dict]:
    """The running exports' entries, oldest first; entries of exports that are gone are
    removed."""
    try:
        names = os.listdir(exports_dir())
    except OSError:
        return []
    found = []
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext != ".json" or not stem.isdigit():
            continue
        if not _serving(int(stem)):
            remove_entry(int(stem))
            continue
        try:
            with open(os.path.join(exports_dir(), name)) as f:
                found.append(json.load(f))
        except (OSError, ValueError):
            continue            # being replaced, or going away
    return sorted(found, key=lambda e: e.get("started", 0))


def find(name: str) -> dict | None:
    """The export ``name`` designates: its socket path (relative or absolute), ADDR:PORT, or
    its URI."""
    candidates = {name, os.path.abspath(name)}
    for entry in exports():
        if candidates & {entry["address"], entry["uri"], entry.get("socket")}:
            return entry
    return None


def stop(entry: dict, timeout: float) -> None:
    """Stop an export: nbdkit finishes the requests in flight, then the plugin flushes the
    image, wipes the key and removes the entry; the socket file goes too.  BusyError if it
    does not exit within ``timeout`` seconds."""
    from cryptfs.fuse.unmount import wait_exit
    pid = entry["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise BusyError(f"export {entry['address']}: nbdkit {pid} is another user's") from None
    if not wait_exit(pid, timeout):
        raise BusyError(f"export {entry['address']}: nbdkit {pid} did not exit within "
                        f"{timeout:g} s")
    remove_entry(pid)
    socket_path = entry.get("socket")
    if socket_path and os.path.exists(socket_path) and \
            stat.S_ISSOCK(os.lstat(socket_path).st_mode):
        os.unlink(socket_path)
