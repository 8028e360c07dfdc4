"""Serve an assembled device over FUSE until unmounted, on one of two planes.

``serve()`` runs under trio and picks the plane (:func:`cryptfs.fuse.native.choose`): the
native plane serves the session in C (:mod:`cryptfs.fuse.native`); the trio plane puts the
request queue and the FUSE operations on top of the device :func:`cryptfs.stack.assemble`
built.  Either way it mounts, reports readiness, and serves until the mount goes away
(``cryptfs close``, ``fusermount3 -u``) or a SIGTERM/SIGINT/SIGHUP arrives — then it flushes
the image, unmounts and takes the stack apart (wiping the key).
"""

import logging
import os
import signal
from typing import Callable

import pyfuse3
import trio

from cryptfs.core.selftest import check_async
from cryptfs.fuse import fallocate as fuse_fallocate
from cryptfs.fuse import native
from cryptfs.fuse.mounts import mount_type
from cryptfs.fuse.operations import DeviceOperations
from cryptfs.fuse.queue import RequestQueue
from cryptfs.stack import Stack

log = logging.getLogger(__name__)


class Daemon:
    """One mounted device: the stack, the queue in front of it, and ``status()`` — what
    ``stats`` and ``cryptfs status`` show."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.device = stack.device
        self.queue = RequestQueue(stack.device, stack.config.pipeline, stack.stats)
        self.discard_available = False
        self.log_file: str | None = None        # where a detached daemon logs (for status)
        self.plane, self.plane_reason = native.choose(stack)
        if self.plane == "native":
            native.prepare(stack)
            self.plane, self.plane_reason = native.choose(stack)   # software if refused
        self.session = None                     # the native plane's, while it serves

    async def start(self, nursery: trio.Nursery) -> None:
        """Start an asynchronous backend's own task and self-test it; a backend that fails
        is logged and replaced by ``software`` — the device still opens."""
        s = self.stack
        if not s.backend.caps.asynchronous:
            return
        await nursery.start(s.backend.run)
        pipeline = s.config.pipeline
        problem = await check_async(s.backend, s.volume.spec, s.volume.key.buffer,
                                     s.volume.geometry, pipeline.mode,
                                     pipeline.completion_timeout)
        if problem:
            log.warning("backend %s failed its self-test (%s): using software instead",
                        s.backend.name, problem)
            s.replace_backend(f"{s.backend.name} failed its self-test: {problem}")
            self.queue.place()

    def status(self) -> dict:
        s, q = self.stack, self.queue
        v, g = s.volume, s.volume.geometry
        return {
            "pid": os.getpid(),
            "log_file": self.log_file,
            "image": os.path.abspath(s.image.path),
            "type": v.kind,
            "cipher": str(v.spec),
            **v.info,
            "sector_size": g.sector_size,
            "iv_large_sectors": g.iv_large_sectors,
            "payload_offset": g.payload_offset,
            "size": g.size,
            "read_only": s.device.read_only,
            "allow_discards": s.device.allow_discards,
            "discard_available": self.discard_available,
            "backend": s.backend.name,
            "crypto_path": "multi_du" if s.converter.multi_du else "per_sector",
            "crypto_path_reason": s.converter.reason,
            "backend_refused": s.refused,
            "plane": self.plane,
            "plane_reason": self.plane_reason,
            "reads": "native" if self.plane == "native" else q.reads,
            "writes": "native" if self.plane == "native" else q.writes,
            "queue_depth": q.depth,
            "counters": self.counters(),
            "backend_stats": s.backend.statistics(),
        }

    def counters(self) -> dict:
        """The device's counters: the stack's, and the native plane's C threads' merged in."""
        counters = self.stack.stats.snapshot()
        if self.session is not None:
            for name, n in self.session.counters().items():
                if n:
                    counters[name] = counters.get(name, 0) + n
        return counters

    def close(self) -> None:
        self.stack.close()


async def serve(daemon: Daemon, mountpoint: str, ready: Callable[[], None]) -> None:
    """Mount, call ``ready()``, serve until unmounted or signalled, then flush and unmount."""
    log.info("plane: %s (%s)", daemon.plane, daemon.plane_reason)
    if daemon.plane == "native":
        await native.serve(daemon, mountpoint, ready)
    else:
        await _serve_trio(daemon, mountpoint, ready)


async def _serve_trio(daemon: Daemon, mountpoint: str, ready: Callable[[], None]) -> None:
    ops = DeviceOperations(daemon.queue, daemon.status)
    pyfuse3.init(ops, mountpoint, set(native.mount_options(daemon.stack.config)))
    try:
        async with trio.open_nursery() as nursery:
            await daemon.start(nursery)
            daemon.discard_available = fuse_fallocate.install(nursery, ops.fallocate)
            nursery.start_soon(_watch_signals)
            ready()
            log.info("serving %s at %s", daemon.stack.image.path, mountpoint)
            await pyfuse3.main(max_tasks=daemon.stack.config.pipeline.fuse_tasks)
            nursery.cancel_scope.cancel()
    finally:
        await daemon.queue.flush()
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
