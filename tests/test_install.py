"""What ``pip install .`` puts in a fresh virtual environment: the package as ``cryptfs`` only
(``backends/`` installed as ``cryptfs.backends``, no top-level ``backends``), no plotting or
numpy in the base install, plots with the ``bench`` extra — and a package whose native core
could not be built still opens images, on ``software``, saying so."""

import os
import shutil
import subprocess
import sys

import pytest

from helpers import fresh_copy

pytestmark = pytest.mark.slow

PROBE = """
import importlib.util as u, json
print(json.dumps({name: u.find_spec(name) is not None
                  for name in ("backends", "cryptfs.backends", "numpy", "matplotlib")}))
"""

UNBUILT = """
import json, sys
from cryptfs.core.config import Config
from cryptfs.core.volume import KeySource
from cryptfs.fuse.daemon import Daemon
from cryptfs.stack import assemble
image, key = sys.argv[1:]
config = Config()
for section, name, value in (("device", "type", "plain"), ("crypto", "key_file", key)):
    config.set(section, name, value)
daemon = Daemon(assemble(image, config, KeySource(key)))
daemon.device.write(1000, b"still works")
status = daemon.status()
print(json.dumps({"backend": status["backend"], "refused": status["backend_refused"],
                  "plane": status["plane"], "read": bytes(daemon.device.read(1000, 11)).decode()}))
daemon.close()
"""


def venv(where, *install, env=None):
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    pip = subprocess.run([str(where / "bin/pip"), "install", "-q", *install], env=env,
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    return where / "bin/python"


def run(python, code, *args):
    import json
    result = subprocess.run([str(python), "-c", code, *map(str, args)], capture_output=True,
                            text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.fixture
def source(tmp_path):
    """The tree as a clone holds it: no build/ left by an earlier in-tree build."""
    (tmp_path / "src").mkdir()
    fresh_copy(tmp_path / "src")
    return tmp_path / "src"


def test_base_install_and_bench_extra(tmp_path, source):
    python = venv(tmp_path / "v", str(source))
    assert run(python, PROBE) == {"backends": False, "cryptfs.backends": True,
                                  "numpy": False, "matplotlib": False}
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"{source}[bench]"], check=True,
                   capture_output=True)
    assert run(python, PROBE)["matplotlib"]


def test_without_the_native_core_it_serves_on_software(tmp_path, source):
    python = venv(tmp_path / "v", str(source))    # the dependencies, built as usual
    shutil.rmtree(source / "build", ignore_errors=True)     # (the first build's objects)
    env = dict(os.environ, CC="false")          # then cryptfs with no compiler: its optional
    rebuilt = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",  # parts
                              "--force-reinstall", "--no-cache-dir", str(source)], env=env,
                             capture_output=True, text=True)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    (tmp_path / "image").write_bytes(bytes(1 << 20))
    (tmp_path / "key").write_bytes(bytes(range(64)))
    shown = run(python, UNBUILT, tmp_path / "image", tmp_path / "key")
    assert shown["backend"] == "software" and shown["read"] == "still works"
    assert "multidu is unavailable" in shown["refused"] and "not built" in shown["refused"]
    assert shown["plane"] == "trio"
