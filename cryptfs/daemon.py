"""Assemble an opened volume into a running device and serve it over FUSE until unmounted.

``serve()`` runs under trio: it builds backend → converter → queue → device, mounts the FUSE
file system, reports readiness, and serves until the mount goes away (``cryptfs close``,
``fusermount3 -u``) or a SIGTERM/SIGINT/SIGHUP arrives — then it flushes the image and unmounts.
"""

import logging
import os
import signal
from typing import Callable

import pyfuse3
import trio

import backends
from backends.software import SoftwareBackend

from . import fuse_fallocate
from .config import Config, backend_options
from .convert import Converter
from .device import Device
from .fuse_ops import DeviceOperations
from .image import Image
from .mounts import mount_type
from .queue import RequestQueue
from .selftest import known_answer
from .stats import Stats
from .volume import Volume

log = logging.getLogger(__name__)


class Daemon:
    """Everything one mounted device owns; ``status()`` is what ``stats`` and ``status`` show."""

    def __init__(self, volume: Volume, image: Image, config: Config):
        self.volume, self.image, self.config = volume, image, config
        spec, key = volume.spec, volume.key.buffer
        options = backend_options(config, backends.backend_class(config.backend.name).OPTIONS)
        self.backend = backends.create(config.backend.name, spec, key, options)
        self.fallback = SoftwareBackend(spec, key)
        self.fallen_back: str | None = None     # why the configured backend was refused
        self.stats = Stats()
        self.converter = self._converter(self.backend)
        self.queue = RequestQueue(image, self.converter, volume.geometry, config.pipeline,
                                  self.stats)
        self.device = Device(volume.geometry, self.queue, image, self.stats,
                             read_only=config.device.read_only,
                             allow_discards=config.device.allow_discards)
        self.discard_available = False
        self.log_file: str | None = None        # where a detached daemon logs (for status)

    def _converter(self, backend) -> Converter:
        pipeline, v = self.config.pipeline, self.volume
        return Converter(backend, self.fallback, v.spec, v.key.buffer, v.geometry, self.stats,
                         mode=pipeline.mode, completion_timeout=pipeline.completion_timeout,
                         alloc_failure_rate=pipeline.inject_alloc_failure)

    async def start(self, nursery: trio.Nursery) -> None:
        """Start an asynchronous backend's own task and self-test it; a backend that fails
        is logged and replaced by ``software`` — the device still opens."""
        if not self.backend.caps.asynchronous:
            return
        await nursery.start(self.backend.run)
        v, pipeline = self.volume, self.config.pipeline
        problem = await known_answer(self.backend, v.spec, v.key.buffer, v.geometry,
                                     pipeline.mode, pipeline.completion_timeout)
        if problem:
            log.warning("backend %s failed its self-test (%s): using software instead",
                        self.backend.name, problem)
            self.fallen_back = f"{self.backend.name} failed its self-test: {problem}"
            self.backend.close()
            self.backend = self.fallback
            self.converter = self.queue.converter = self._converter(self.backend)

    def status(self) -> dict:
        v, g, p = self.volume, self.volume.geometry, self.queue
        return {
            "pid": os.getpid(),
            "log_file": self.log_file,
            "image": os.path.abspath(self.image.path),
            "type": v.kind,
            "cipher": str(v.spec),
            **v.info,
            "sector_size": g.sector_size,
            "iv_large_sectors": g.iv_large_sectors,
            "payload_offset": g.payload_offset,
            "size": g.size,
            "read_only": self.device.read_only,
            "allow_discards": self.device.allow_discards,
            "discard_available": self.discard_available,
            "backend": self.backend.name,
            "crypto_path": "multi_du" if self.converter.multi_du else "per_sector",
            "crypto_path_reason": self.converter.reason,
            "backend_refused": self.fallen_back,
            "reads": "offload" if p.offload_reads else "inline",
            "writes": "offload" if p.offload_writes else "inline",
            "queue_depth": p.depth,
            "counters": self.stats.snapshot(),
            "backend_stats": self.backend.statistics(),
        }

    def close(self) -> None:
        if self.backend is not self.fallback:
            self.backend.close()
        self.fallback.close()
        self.volume.close()
        self.image.close()


def fuse_options(config: Config) -> set[str]:
    opts = set(pyfuse3.default_options)       # default_permissions: the kernel checks modes
    opts |= {"fsname=cryptfs", "subtype=cryptfs"}
    if config.device.read_only:
        opts.add("ro")
    if config.device.allow_other:
        opts.add("allow_other")
    return opts


async def serve(daemon: Daemon, mountpoint: str, ready: Callable[[], None]) -> None:
    """Mount, call ``ready()``, serve until unmounted or signalled, then flush and unmount."""
    ops = DeviceOperations(daemon.device, daemon.status)
    pyfuse3.init(ops, mountpoint, fuse_options(daemon.config))
    try:
        async with trio.open_nursery() as nursery:
            await daemon.start(nursery)
            daemon.discard_available = fuse_fallocate.install(nursery, ops.fallocate)
            nursery.start_soon(_watch_signals)
            ready()
            log.info("serving %s at %s", daemon.image.path, mountpoint)
            await pyfuse3.main(max_tasks=daemon.config.pipeline.fuse_tasks)
            nursery.cancel_scope.cancel()
    finally:
        await daemon.device.flush()
        # Unmounted already when `close` or fusermount3 ended the loop; not after a signal.
        pyfuse3.close(unmount=mount_type(mountpoint) is not None)
        daemon.close()
        log.info("closed %s", mountpoint)


async def _watch_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: flushing and unmounting", signum)
            pyfuse3.terminate()
            return
