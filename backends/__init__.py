"""Crypto backends behind one contract (:mod:`cryptfs.backends.base`), created by name.

``create(name, spec, key, options, threads)`` builds a backend for an open device; an unknown
name raises BackendError listing the known ones.  Each backend class declares ``Options``: a
dataclass of its ``[backend.<name>]`` keys, declared with :func:`cryptfs.util.options.option` like
every other key, which the config loader checks.
``threads`` is how many threads one request's crypto may use (only ``multidu`` splits work).
"""

import importlib

from cryptfs.backends.base import Backend, CryptoFailure, Unavailable
from cryptfs.errors import BackendError

#: name → "module:class", imported on first use so an unused backend costs nothing.
REGISTRY = {
    "software": "cryptfs.backends.software:SoftwareBackend",
    "multidu": "cryptfs.backends.multidu:MultiDuBackend",
    "engine": "cryptfs.backends.engine:EngineBackend",
}


def backend_class(name: str):
    try:
        target = REGISTRY[name]
    except KeyError:
        raise BackendError(f"unknown backend '{name}' (known: {', '.join(REGISTRY)})") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def create(name: str, spec, key: bytes | bytearray, options=None, threads: int = 1) -> Backend:
    """Build backend ``name`` for ``spec`` keyed with ``key`` (``options``: an instance of its
    ``Options``, None for the defaults); Unavailable where it cannot run on this
    installation, BackendError if it refuses the key or options."""
    cls = backend_class(name)
    try:
        return cls(spec, key, options, threads=threads)
    except Unavailable:
        raise
    except CryptoFailure as e:
        raise BackendError(f"backend '{name}': {e}") from None
