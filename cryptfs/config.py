"""The config file (TOML) and its reference: ``[device]``, ``[crypto]``, ``[pipeline]``,
``[backend]`` (+ ``[backend.<name>]`` for that backend's own options).

Every key is declared once below with its type, default, allowed values and a one-line help;
:func:`load` refuses an unknown key, a wrong type or an impossible value with one line naming
``[section] key`` and what is allowed.  Command-line flags override the file through
:func:`Config.set`, which runs the same checks.
"""

import json
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from .errors import ConfigError
from .geometry import check_sector_size
from .mdtable import markdown_table


def _choice(*allowed: str) -> Callable[[Any], None]:
    def check(value):
        if value not in allowed:
            raise ValueError(f"one of {', '.join(allowed)}")
    return check


def _between(lo: int, hi: int) -> Callable[[Any], None]:
    def check(value):
        if not lo <= value <= hi:
            raise ValueError(f"between {lo} and {hi}")
    return check


def _sector_size(value: int) -> None:
    try:
        check_sector_size(value)
    except ConfigError:
        raise ValueError("a power of two between 512 and 4096") from None


def _key(default, help: str, check: Callable[[Any], None] | None = None, kind: type | None = None):
    return field(default=default, metadata={"help": help, "check": check,
                                            "type": kind or type(default)})


@dataclass
class DeviceSection:
    type: str = _key("luks", "image format: luks (LUKS1 or LUKS2, from the header), luks1, "
                     "luks2, plain", _choice("luks", "luks1", "luks2", "plain"))
    header: str = _key("", "detached LUKS header file (empty: the header is in the image)")
    key_slot: int = _key(-1, "LUKS key slot to try (-1: every active slot)",
                         _between(-1, 31))
    offset: int = _key(0, "start of the payload in the image, in 512-byte sectors (plain mode)",
                       _between(0, 2**55))
    skip: int = _key(0, "added to the sector number for IV generation, in 512-byte sectors "
                     "(plain mode)", _between(0, 2**55))
    read_only: bool = _key(False, "refuse writes (EROFS) and open the image read-only")
    allow_discards: bool = _key(False, "punch the ciphertext on discard (fallocate punch-hole)")
    allow_other: bool = _key(False, "let other users reach the mount (FUSE allow_other); the "
                                    "device stays mode 0600")


@dataclass
class CryptoSection:
    cipher: str = _key("aes-xts-plain64", "dm-crypt cipher spec (plain mode): "
                       "cipher-chainmode-ivmode[:hash]")
    key_size: int = _key(0, "key size in bits (plain mode); 0 picks the cipher's default "
                         "(XTS 512, CBC 256)", _between(0, 512))
    key_file: str = _key("", "plain: file holding the raw key; LUKS: file whose contents are "
                         "the passphrase; '-' reads standard input; empty asks")
    hash: str = _key("sha256", "passphrase hash for plain mode ('plain' uses it unhashed)")
    sector_size: int = _key(512, "encryption sector (data unit) size in bytes (plain mode)",
                            _sector_size)
    iv_large_sectors: bool = _key(False, "IVs count sector_size units, not 512-byte sectors "
                                  "(plain mode)")


def _probability(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError("between 0 and 1")


@dataclass
class PipelineSection:
    mode: str = _key("multi_du", "crypto requests per bio: multi_du (one per bio) or "
                     "per_sector (one per data unit, as dm-crypt today)",
                     _choice("per_sector", "multi_du"))
    queue_depth: int = _key(64, "bios in flight at once (backpressure beyond)", _between(1, 4096))
    no_read_workqueue: bool = _key(True, "decrypt reads inline instead of on a worker thread")
    no_write_workqueue: bool = _key(True, "encrypt writes inline instead of on a worker thread")
    crypto_threads: int = _key(0, "worker threads for offloaded crypto; 0 is one per CPU",
                               _between(0, 256))
    fuse_tasks: int = _key(64, "concurrent FUSE requests the daemon serves", _between(1, 4096))
    completion_timeout: float = _key(30.0, "seconds to wait for an asynchronous completion "
                                     "before redoing the request in software",
                                     _between(0.001, 3600))
    inject_alloc_failure: float = _key(0.0, "fault injection: probability that a multi_du bio "
                                       "cannot get its buffers (it then goes per sector)",
                                       _probability)


@dataclass
class BackendSection:
    name: str = _key("multidu", "crypto backend: multidu (native multi data unit), software "
                     "(one cryptography call per data unit) or engine (simulated hardware)")
    options: dict = field(default_factory=dict)   # [backend.<name>] tables, checked per backend


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
        setattr(target, key, _checked(label, value, spec.metadata["type"], spec.metadata["check"]))
        self.explicit.add((section, key))


def _checked(label: str, value: Any, kind: type, check) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # bool is an int in Python; TOML keeps them apart and so do we.
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)) or \
            kind is not int and not isinstance(value, kind):
        raise ConfigError(f"config: {label} must be {_type_name(kind)}, "
                          f"got {_type_name(type(value), article=False)} {value!r}")
    if check:
        try:
            check(value)
        except ValueError as e:
            raise ConfigError(f"config: {label} must be {e}, got {value!r}") from None
    return value


_TYPE_NAMES = {bool: "boolean", int: "integer", str: "string", float: "number", dict: "table",
               list: "array"}


def _type_name(kind: type, article: bool = True) -> str:
    name = _TYPE_NAMES.get(kind, kind.__name__)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}" if article else name


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
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
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


OptionSpec = tuple[type, Any, Callable | None, str]     # (type, default, check, help)


def backend_options(config: Config, declared: dict[str, OptionSpec]) -> dict:
    """The checked ``[backend.<name>]`` options of the chosen backend, defaults filled in.

    ``declared`` is the backend's OPTIONS: key → (type, default, check or None, help).
    """
    name = config.backend.name
    given = dict(config.backend.options.get(name, {}))
    for other in config.backend.options:
        if other != name:
            raise ConfigError(f"config: [backend.{other}] given but the backend is '{name}'")
    result = {}
    for key, (kind, default, check, _help) in declared.items():
        value = given.pop(key, default)
        result[key] = _checked(f"[backend.{name}] {key}", value, kind, check)
    if given:
        known = ", ".join(declared) or "none"
        raise ConfigError(f"config: unknown key [backend.{name}] {next(iter(given))} "
                          f"(known: {known})")
    return result


def reference() -> str:
    """The config reference as Markdown (README's table is made from this)."""
    return markdown_table(
        ["key", "type", "default", "meaning"],
        ([f"`[{section}] {f.name}`", _type_name(f.metadata["type"], article=False),
          f"`{json.dumps(f.default)}`", f.metadata["help"]]
         for section, cls in SECTIONS.items() for f in fields(cls) if f.name != "options"))
