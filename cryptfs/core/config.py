"""The config file (TOML) and its reference: ``[device]``, ``[crypto]``, ``[pipeline]``,
``[backend]`` (+ ``[backend.<name>]`` for that backend's own options).

Every key is declared once below (:func:`cryptfs.options.option`): type, default, allowed
values, one-line help and, for most of ``[device]`` and ``[crypto]``, the ``open`` flag.  From
these come the flags (:func:`add_flags`), the checks, what LUKS refuses (:data:`PLAIN_ONLY`)
and the reference in docs/config.md (:func:`reference`).  :func:`load` refuses an unknown key,
a wrong type or an impossible value with one line naming ``[section] key`` and what is
allowed; flags override the file through :func:`Config.set`, which runs the same checks.
"""

import argparse
import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from cryptfs.core.geometry import check_sector_size
from cryptfs.errors import ConfigError
from cryptfs.util import options
from cryptfs.util.mdtable import markdown_table
from cryptfs.util.options import between, checked, choice, flag, option, probability, rows


def _sector_size(value: int) -> None:
    try:
        check_sector_size(value)
    except ConfigError:
        raise ValueError("a power of two between 512 and 4096") from None


@dataclass
class DeviceSection:
    type: str = option("luks", "image format: luks (LUKS1 or LUKS2, from the header), luks1, "
                       "luks2, plain (no header)", choice("luks", "luks1", "luks2", "plain"),
                       flags=("--type",), metavar="TYPE")
    header: str = option("", "detached LUKS header file (empty: the header is in the image)",
                         flags=("--header",), metavar="FILE")
    key_slot: int = option(-1, "LUKS key slot to try (-1: every active slot)", between(-1, 31),
                           flags=("-S", "--key-slot"), metavar="N")
    offset: int = option(0, "start of the payload in the image, in 512-byte sectors",
                         between(0, 2**55), flags=("-o", "--offset"), metavar="SECTORS",
                         plain_only=True)
    skip: int = option(0, "added to the sector number for IV generation, in 512-byte sectors",
                       between(0, 2**55), flags=("-p", "--skip"), metavar="SECTORS",
                       plain_only=True)
    read_only: bool = option(False, "refuse writes (EROFS) and open the image read-only",
                             flags=("-r", "--read-only"))
    allow_discards: bool = option(False, "punch the ciphertext on discard (fallocate "
                                  "punch-hole on the device)", flags=("--allow-discards",))
    allow_other: bool = option(False, "let other users reach the mount (FUSE allow_other); the "
                               "device keeps its mode and owner", flags=("--allow-other",))


@dataclass
class CryptoSection:
    cipher: str = option("aes-xts-plain64", "dm-crypt cipher spec cipher-chainmode-ivmode[:hash]",
                         flags=("-c", "--cipher"), metavar="SPEC", plain_only=True)
    key_size: int = option(0, "key size in bits; 0 picks the cipher's default (XTS 512, CBC 256)",
                           between(0, 512), flags=("-s", "--key-size"), metavar="BITS",
                           plain_only=True)
    key_file: str = option("", "plain: file holding the raw key (its first key-size bytes); "
                           "LUKS: file whose contents are the passphrase; '-' reads standard "
                           "input; empty asks", flags=("-d", "--key-file"), metavar="FILE")
    keyfile_offset: int = option(0, "skip this many bytes of the key file", between(0, 2**62),
                                 flags=("--keyfile-offset",), metavar="BYTES")
    keyfile_size: int = option(0, "read this many bytes of the key file (0: all of it; plain "
                               "mode: the key size)", between(0, 8192 * 1024),
                               flags=("-l", "--keyfile-size"), metavar="BYTES")
    hash: str = option("sha256", "passphrase hash without a key file: sha256, sha512, sha1, "
                       "ripemd160, or 'plain' (unhashed)", flags=("--hash",), metavar="NAME",
                       plain_only=True)
    sector_size: int = option(512, "encryption sector (data unit) size in bytes", _sector_size,
                              flags=("--sector-size",), metavar="BYTES", plain_only=True)
    iv_large_sectors: bool = option(False, "IVs count sector_size units, not 512-byte sectors",
                                    flags=("--iv-large-sectors",), plain_only=True)


@dataclass
class PipelineSection:
    mode: str = option("multi_du", "crypto requests per bio: multi_du (one per bio) or "
                       "per_sector (one per data unit, as dm-crypt today)",
                       choice("per_sector", "multi_du"))
    queue_depth: int = option(64, "offloaded requests in flight at once (backpressure beyond)",
                              between(1, 4096))
    no_read_workqueue: bool = option(True, "decrypt reads inline instead of on a worker thread")
    no_write_workqueue: bool = option(True, "encrypt writes inline instead of on a worker thread")
    crypto_threads: int = option(0, "threads that do crypto: offloaded requests run on up to this "
                                    "many, and a large bio (multidu's split_bytes) is split over "
                                    "this many; 0 is one per CPU",
                                 between(0, 256))
    plane: str = option("auto", "data plane: native (libfuse in C, every core; multidu inline, "
                        "the engine's C model asynchronously), trio (pyfuse3 + trio, every "
                        "backend and placement; the engine's Python model) or auto (native "
                        "where it can serve)",
                        choice("auto", "native", "trio"))
    fuse_tasks: int = option(64, "trio plane: concurrent FUSE requests the daemon serves",
                             between(1, 4096))
    fuse_threads: int = option(0, "native plane: FUSE worker threads, each with its own "
                                  "/dev/fuse fd; 0 is one per CPU", between(0, 256))
    max_background: int = option(64, "FUSE requests the kernel keeps in flight (libfuse's "
                                      "default 12 caps an asynchronous queue depth)",
                                 between(1, 65535))
    completion_timeout: float = option(30.0, "seconds to wait for an asynchronous completion "
                                       "before redoing the request in software",
                                       between(0.001, 3600))
    inject_alloc_failure: float = option(0.0, "fault injection: probability that a multi_du bio "
                                         "cannot get its buffers (it then goes per sector)",
                                         probability)

    @property
    def threads(self) -> int:
        """Threads that may do crypto: ``crypto_threads``, 0 meaning one per CPU."""
        return self.crypto_threads or os.cpu_count() or 1


@dataclass
class BackendSection:
    name: str = option("multidu", "crypto backend: multidu (native multi data unit), software "
                       "(one cryptography call per data unit) or engine (simulated hardware)",
                       flags=("--backend",), metavar="NAME")
    options: dict = field(default_factory=dict)   # [backend.<name>] tables, checked per backend


#: a config file is a few KiB; reading stops past this
MAX_CONFIG = 1 << 20

SECTIONS = {"device": DeviceSection, "crypto": CryptoSection, "pipeline": PipelineSection,
            "backend": BackendSection}


@dataclass
class Config:
    device: DeviceSection = field(default_factory=DeviceSection)
    crypto: CryptoSection = field(default_factory=CryptoSection)
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    backend: BackendSection = field(default_factory=BackendSection)
    #: (section, key) pairs a file or flag set, as opposed to defaults
    explicit: set = field(default_factory=set, compare=False)

    def set(self, section: str, key: str, value: Any, origin: str | None = None) -> None:
        """Set one key after checking it; ``origin`` names it in errors (default ``[s] key``)."""
        target = getattr(self, section)
        spec = {f.name: f for f in fields(target)}.get(key)
        label = origin or f"[{section}] {key}"
        if spec is None or key == "options":
            known = ", ".join(f.name for f in fields(target) if f.name != "options")
            raise ConfigError(f"config: unknown key {label} (known in [{section}]: {known})")
        setattr(target, key, checked(label, value, spec.metadata["type"], spec.metadata["check"]))
        self.explicit.add((section, key))


def apply_setting(config: Config, setting: str) -> None:
    """``section.key=value`` or ``backend.NAME.key=value`` (value in TOML syntax, or a bare
    string), as a command line gives it; checked like the file."""
    name, sep, text = setting.partition("=")
    parts = name.strip().split(".")
    if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[0] != "backend"):
        raise ConfigError(f"--set {setting}: expected section.key=value or "
                          "backend.NAME.key=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    if len(parts) == 3:
        config.backend.options.setdefault(parts[1], {})[parts[2]] = value
    elif parts[0] not in SECTIONS:
        raise ConfigError(f"--set {setting}: unknown section [{parts[0]}] "
                          f"(known: {', '.join(SECTIONS)})")
    else:
        config.set(parts[0], parts[1], value, origin=f"--set {name}")


def load(path: str | None) -> Config:
    """Read and check a config file; None gives the defaults.  ConfigError on any problem."""
    config = Config()
    if path is None:
        return config
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG + 1)           # bounded: --config /dev/zero ends here
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_CONFIG:
        raise ConfigError(f"config: {path} is larger than {MAX_CONFIG // 1024} KiB: not a "
                          "config file")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config: {path} is not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from None
    for section, table in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"config: unknown section [{section}] (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"config: [{section}] must be a table")
        for key, value in table.items():
            if section == "backend" and isinstance(value, dict):
                config.backend.options[key] = value
            else:
                config.set(section, key, value)
    return config


def backend_options(config: Config, declared: type):
    """The chosen backend's ``[backend.<name>]`` options as an instance of its ``Options``
    dataclass (declared with :func:`option`, like every other key), each checked."""
    name = config.backend.name
    given = dict(config.backend.options.get(name, {}))
    for other in config.backend.options:
        if other != name:
            raise ConfigError(f"config: [backend.{other}] given but the backend is '{name}'")
    declared_fields = {f.name: f for f in fields(declared)}
    for key in given:
        if key not in declared_fields:
            known = ", ".join(declared_fields) or "none"
            raise ConfigError(f"config: unknown key [backend.{name}] {key} (known: {known})")
    return declared(**{key: checked(f"[backend.{name}] {key}", value, f.metadata["type"],
                                    f.metadata["check"])
                       for key, value in given.items() for f in [declared_fields[key]]})


#: (section, key) → flag of what a LUKS header decides; setting them for LUKS is refused
PLAIN_ONLY = {(section, f.name): flag(f) for section, cls in SECTIONS.items()
              for f in fields(cls) if f.metadata.get("plain_only")}


def add_flags(parser: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """The command-line flags of the config keys that have one (``only``: just these keys)."""
    for section, cls in SECTIONS.items():
        options.add_flags(parser, cls, prefix=f"{section}.", only=only)


def apply_flags(config: Config, args: argparse.Namespace) -> None:
    """Set the keys whose flags were given; they override the file."""
    for section, cls in SECTIONS.items():
        for f, value in options.given(cls, args, prefix=f"{section}."):
            config.set(section, f.name, value, origin=flag(f))


def flags_config(args: argparse.Namespace) -> Config:
    """The defaults with the given flags applied (commands that read no config file)."""
    config = Config()
    apply_flags(config, args)
    return config


def reference() -> str:
    """The config reference as Markdown (docs/config.md's table is made from this)."""
    return markdown_table(
        ["key", "flag", "type", "default", "meaning"],
        (row for section, cls in SECTIONS.items()
         for row in rows(cls, key=lambda f, s=section: f"`[{s}] {f.name}`")))
