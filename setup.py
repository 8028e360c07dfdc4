"""The native core (backends/_native.c) is the one thing pyproject.toml cannot declare.

It is optional: where it cannot be built (no compiler, no OpenSSL headers), the package still
installs and the pure-Python multidu path serves (``cryptfs status`` and the log say so).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("backends._native", ["backends/_native.c"], libraries=["crypto"],
                             extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
                             optional=True)])
