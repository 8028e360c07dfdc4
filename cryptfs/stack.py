"""The one place that assembles an image into a device — format → volume key → backend →
converter → device — and takes it apart again, wiping the key.

The FUSE daemon (:mod:`cryptfs.fuse.daemon`) and the Python API both call :func:`assemble`; the
daemon adds the trio side (request queue, FUSE operations) on top of the same device.
"""

import logging
from dataclasses import dataclass

from cryptfs import backends
from cryptfs.backends.base import Backend, Unavailable
from cryptfs.backends.software import SoftwareBackend
from cryptfs.core import selftest
from cryptfs.core.config import Config, backend_options
from cryptfs.core.convert import Converter
from cryptfs.core.device import Device
from cryptfs.core.image import Image
from cryptfs.core.stats import Stats
from cryptfs.core.volume import KeySource, Volume
from cryptfs.formats import open_volume

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Stack:
    image: Image
    volume: Volume
    config: Config
    backend: Backend
    fallback: Backend             # software: redoes what the backend failed
    device: Device
    stats: Stats
    refused: str | None = None    # why the configured backend was replaced by software

    @property
    def converter(self) -> Converter:
        return self.device.converter

    def replace_backend(self, reason: str) -> None:
        """Serve on the software fallback from now on (the backend failed its self-test)."""
        self.use_backend(self.fallback)
        self.refused = reason

    def use_backend(self, backend: Backend) -> None:
        """Serve on ``backend`` from now on (the current one is closed)."""
        if self.backend is not self.fallback:
            self.backend.close()
        self.backend = backend
        self.device.converter = _converter(self.backend, self.fallback, self.volume,
                                           self.config, self.stats)

    def close(self) -> None:
        """Close the backends, wipe the volume key, close the image."""
        if self.backend is not self.fallback:
            self.backend.close()
        self.fallback.close()
        self.volume.close()
        self.image.close()


def assemble(image_path: str, config: Config, keys: KeySource) -> Stack:
    """Open ``image_path`` as ``config`` says, unlock it with ``keys`` and build its device.

    The backend and its options are checked before the image is opened or any key is read.
    CryptfsError (one line) on any problem; nothing is left open then."""
    backend_class = backends.backend_class(config.backend.name)
    options = backend_options(config, backend_class.Options)
    image = Image(image_path, read_only=config.device.read_only)
    if image.read_only and not config.device.read_only:
        log.warning("%s is a read-only block device: opening it read-only", image_path)
        config.device.read_only = True
    try:
        volume = open_volume(image, config, keys)
    except BaseException:
        image.close()
        raise
    try:
        return _build(image, volume, config, options)
    except BaseException:
        volume.close()
        image.close()
        raise


def _build(image: Image, volume: Volume, config: Config, options) -> Stack:
    spec, key = volume.spec, volume.key.buffer
    threads = config.pipeline.threads
    fallback = SoftwareBackend(spec, key)
    refused = None
    try:
        backend = backends.create(config.backend.name, spec, key, options, threads=threads)
    except Unavailable as e:
        log.warning("backend %s is unavailable (%s): using software", config.backend.name, e)
        backend, refused = fallback, f"{config.backend.name} is unavailable: {e}"
    stats = Stats()
    device = Device(volume.geometry, image, _converter(backend, fallback, volume, config, stats),
                    stats, read_only=image.read_only,
                    allow_discards=config.device.allow_discards)
    stack = Stack(image, volume, config, backend, fallback, device, stats, refused)
    if not backend.caps.asynchronous:       # asynchronous ones once their task runs
        problem = selftest.check(backend, spec, key, volume.geometry, config.pipeline.mode)
        if problem:
            log.warning("backend %s failed its self-test (%s): using software instead",
                        backend.name, problem)
            stack.replace_backend(f"{backend.name} failed its self-test: {problem}")
    return stack


def _converter(backend: Backend, fallback: Backend, volume: Volume, config: Config,
               stats: Stats) -> Converter:
    pipeline = config.pipeline
    return Converter(backend, fallback, volume.spec, volume.key.buffer, volume.geometry, stats,
                     mode=pipeline.mode, completion_timeout=pipeline.completion_timeout,
                     alloc_failure_rate=pipeline.inject_alloc_failure)
