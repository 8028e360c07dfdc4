"""Crypto backends behind one contract (:mod:`backends.base`), created by name.

``create(name, spec, key, options, threads)`` builds a backend for an open device; an unknown
name raises BackendError listing the known ones.  Each backend class declares ``OPTIONS``: its
config keys under ``[backend.<name>]`` and their types, which the config loader checks.
``threads`` is how many threads one request's crypto may use (only ``multidu`` splits work).
"""

import importlib

from cryptfs.errors import BackendError

from .base import Backend, CryptoFailure

#: name → "module:class", imported on first use so an unused backend costs nothing.
REGISTRY = {
    "software": "backends.software:SoftwareBackend",
    "multidu": "backends.multidu:MultiDuBackend",
    "engine": "backends.engine:EngineBackend",
}


def backend_class(name: str):
    try:
        target = REGISTRY[name]
    except KeyError:
        raise BackendError(f"unknown backend '{name}' (known: {', '.join(REGISTRY)})") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def create(name: str, spec, key: bytes | bytearray, options: dict | None = None,
           threads: int = 1) -> Backend:
    """Build backend ``name`` for ``spec`` keyed with ``key``; BackendError if it cannot."""
    cls = backend_class(name)
    try:
        return cls(spec, key, options or {}, threads=threads)
    except CryptoFailure as e:
        raise BackendError(f"backend '{name}': {e}") from None
