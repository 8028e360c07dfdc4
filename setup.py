"""The compiled parts, the one thing pyproject.toml cannot declare.

Both are optional, so the package installs wherever Python does:

* the native core (backends/_native.c, the Python binding, over backends/core.c and OpenSSL's
  libcrypto): where it cannot be built (no compiler, no OpenSSL headers), ``multidu`` is
  unavailable and devices serve on ``software`` (``cryptfs status`` and the log say so);
* the native data plane (cryptfs/fuse/_plane.c, over libfuse3's low-level API; it reaches the
  core through a capsule, so it needs no OpenSSL): where libfuse3's headers are missing, devices
  serve on the trio plane (pyfuse3), which needs only the shared library.
"""

import shlex
import subprocess

from setuptools import Extension, setup

WARNINGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra"]


def pkg_config(package: str, fallback: dict) -> dict:
    """Compiler and linker flags of ``package`` from pkg-config, or ``fallback`` where
    pkg-config or the package's .pc file is missing (the build then fails, optionally, only if
    the headers really are absent)."""
    try:
        out = subprocess.run(["pkg-config", "--cflags", "--libs", package], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return fallback
    flags = {"include_dirs": [], "libraries": [], "library_dirs": [], "extra_compile_args": []}
    for flag in shlex.split(out):
        kind = {"-I": "include_dirs", "-l": "libraries", "-L": "library_dirs"}.get(flag[:2])
        if kind:
            flags[kind].append(flag[2:])
        else:
            flags["extra_compile_args"].append(flag)
    return flags


fuse3 = pkg_config("fuse3", {"include_dirs": ["/usr/include/fuse3"],
                             "libraries": ["fuse3", "pthread"]})

setup(ext_modules=[
    Extension("cryptfs.backends._native", ["backends/_native.c", "backends/core.c",
                                           "backends/adiantum.c", "backends/engine.c"],
              depends=["backends/core.h", "backends/adiantum.h", "backends/engine.h"],
              libraries=["crypto", "gcrypt"],
              extra_compile_args=WARNINGS, optional=True),
    Extension("cryptfs.fuse._plane", ["cryptfs/fuse/_plane.c", "cryptfs/fuse/offload.c"],
              depends=["backends/core.h", "backends/engine.h", "cryptfs/fuse/device_io.h",
                       "cryptfs/fuse/offload.h"],
              include_dirs=["backends", *fuse3.get("include_dirs", [])],
              libraries=fuse3.get("libraries", []),
              library_dirs=fuse3.get("library_dirs", []),
              extra_compile_args=WARNINGS + fuse3.get("extra_compile_args", []),
              optional=True),
    Extension("cryptfs.backends._adiantum", ["backends/_adiantum.c", "backends/adiantum.c"],
              depends=["backends/adiantum.h"], libraries=["crypto"],
              extra_compile_args=WARNINGS, optional=True),
])
