"""Config: the reference, and one clear line for every kind of mistake."""

import re
from dataclasses import dataclass

import pytest

from cryptfs.backends.software import NoOptions
from cryptfs.core.config import Config, backend_options, load, reference
from cryptfs.errors import ConfigError
from cryptfs.util.options import option


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_a_file():
    c = load(None)
    assert (c.crypto.cipher, c.crypto.sector_size, c.backend.name) == ("aes-xts-plain64", 512,
                                                                        "multidu")


def test_a_full_file_is_read(tmp_path):
    c = load(write(tmp_path, """
[device]
offset = 8
read_only = true
[crypto]
cipher = "aes-cbc-essiv:sha256"
key_size = 256
sector_size = 4096
iv_large_sectors = true
[pipeline]
queue_depth = 8
no_write_workqueue = false
[backend]
name = "software"
"""))
    assert c.device.offset == 8 and c.device.read_only
    assert c.crypto.sector_size == 4096 and c.crypto.iv_large_sectors
    assert c.pipeline.queue_depth == 8 and not c.pipeline.no_write_workqueue


@pytest.mark.parametrize("text, message", [
    ("[crypto]\nciphr = 'x'", "config: unknown key [crypto] ciphr (known in [crypto]: cipher,"),
    ("[cryto]\ncipher = 'x'", "config: unknown section [cryto]"),
    ("[crypto]\nsector_size = '4096'", "config: [crypto] sector_size must be an integer, got "
                                       "string '4096'"),
    ("[crypto]\nsector_size = 1000", "config: [crypto] sector_size must be a power of two "
                                     "between 512 and 4096, got 1000"),
    ("[device]\nread_only = 1", "config: [device] read_only must be a boolean, got integer 1"),
    ("[pipeline]\nqueue_depth = 0", "config: [pipeline] queue_depth must be between 1 and 4096"),
    ("[device]\ntype = 'zfs'", "config: [device] type must be one of luks, luks1, luks2, plain"),
    ("[device\n", "is not valid TOML"),
    ("device = 3", "config: [device] must be a table"),
])
def test_mistakes_get_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path / "nope.toml"))


def test_cli_override_is_checked_and_named_as_the_flag():
    c = Config()
    c.set("crypto", "sector_size", 4096, origin="--sector-size")
    assert c.crypto.sector_size == 4096
    with pytest.raises(ConfigError, match="--sector-size must be a power of two"):
        c.set("crypto", "sector_size", 1536, origin="--sector-size")


def test_backend_options_are_checked_against_the_backend(tmp_path):
    c = load(write(tmp_path, "[backend]\nname = 'software'\n[backend.software]\nspeed = 3\n"))
    with pytest.raises(ConfigError, match=r"unknown key \[backend.software\] speed"):
        backend_options(c, NoOptions)
    c = load(write(tmp_path, "[backend]\nname = 'software'\n[backend.engine]\nx = 1\n"))
    with pytest.raises(ConfigError, match=r"\[backend.engine\] given but the backend is"):
        backend_options(c, NoOptions)

    @dataclass
    class Declared:
        depth: int = option(4, "slots")
    c = load(write(tmp_path, "[backend]\nname = 'software'\n[backend.software]\ndepth = 'deep'\n"))
    with pytest.raises(ConfigError, match="depth must be an integer"):
        backend_options(c, Declared)
    assert backend_options(load(None), Declared) == Declared(depth=4)


@pytest.mark.parametrize("backend, key, value, rule", [
    ("multidu", "split_bytes", -1, "at least 0"),
    ("engine", "queue_depth", 0, "at least 1"),
    ("engine", "error_rate", 1.5, "between 0 and 1"),
])
def test_backend_options_are_checked_against_their_bounds(tmp_path, backend, key, value, rule):
    from cryptfs import backends
    c = load(write(tmp_path, f"[backend]\nname = '{backend}'\n[backend.{backend}]\n"
                             f"{key} = {value}\n"))
    with pytest.raises(ConfigError, match=rf"\[backend.{backend}\] {key}.*{rule}"):
        backend_options(c, backends.backend_class(backend).Options)


def test_reference_lists_every_key():
    text = reference()
    for key in ("[device] offset", "[crypto] iv_large_sectors", "[pipeline] no_read_workqueue",
                "[backend] name"):
        assert key in text


def test_set_from_the_command_line():
    from cryptfs.core.config import apply_setting
    c = Config()
    apply_setting(c, "pipeline.mode=per_sector")
    apply_setting(c, "backend.engine.error_rate=0.01")
    apply_setting(c, "device.header=/tmp/hdr")                 # a bare string
    assert c.pipeline.mode == "per_sector" and c.device.header == "/tmp/hdr"
    assert c.backend.options == {"engine": {"error_rate": 0.01}}
    for bad, message in (("pipeline.mode", "expected section.key=value"),
                         ("pipe.mode=x", "unknown section [pipe]"),
                         ("pipeline.queue_depth=0", "--set pipeline.queue_depth must be between"),
                         ("crypto.sector_size='4k'", "must be an integer")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            apply_setting(c, bad)
