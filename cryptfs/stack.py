"""The one place that assembles an image into a device — format → volume key → backend →
converter → device — and takes it apart again, wiping the key.

The FUSE daemon (:mod:`cryptfs.daemon`) and the Python API both call :func:`assemble`; the
daemon adds the trio side (request queue, FUSE operations) on top of the same device.
"""

from dataclasses import dataclass

import backends
from backends.base import Backend
from backends.software import SoftwareBackend

from .config import Config, backend_options
from .convert import Converter
from .device import Device
from .formats import open_volume
from .image import Image
from .queue import crypto_threads
from .stats import Stats
from .volume import KeySource, Volume


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
        self.backend.close()
        self.backend, self.refused = self.fallback, reason
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
    options = backend_options(config, backend_class.OPTIONS)
    image = Image(image_path, read_only=config.device.read_only)
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


def _build(image: Image, volume: Volume, config: Config, options: dict) -> Stack:
    spec, key = volume.spec, volume.key.buffer
    threads = crypto_threads(config.pipeline)
    backend = backends.create(config.backend.name, spec, key, options, threads=threads)
    fallback = SoftwareBackend(spec, key)
    stats = Stats()
    device = Device(volume.geometry, image, _converter(backend, fallback, volume, config, stats),
                    stats, read_only=config.device.read_only,
                    allow_discards=config.device.allow_discards)
    return Stack(image, volume, config, backend, fallback, device, stats)


def _converter(backend: Backend, fallback: Backend, volume: Volume, config: Config,
               stats: Stats) -> Converter:
    pipeline = config.pipeline
    return Converter(backend, fallback, volume.spec, volume.key.buffer, volume.geometry, stats,
                     mode=pipeline.mode, completion_timeout=pipeline.completion_timeout,
                     alloc_failure_rate=pipeline.inject_alloc_failure)
