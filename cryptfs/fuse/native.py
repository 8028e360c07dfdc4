"""The native plane: the FUSE session served in C (:mod:`cryptfs.fuse._plane`, libfuse's
low-level API, one cloned /dev/fuse fd per worker thread), over the same assembled stack.

Python decides whether it may serve (:func:`choose`), checks a request for it before the
passphrase (:func:`check_requested`), hands the C side the image, the geometry and the keyed
native core, answers ``stats`` and owns the daemon's life (:func:`serve`): signals, flush,
unmount, the key wiped on close.  READ, WRITE, FLUSH, FSYNC and FALLOCATE never enter Python.

It serves where the backend has a C implementation — ``multidu`` on its native core, inline
in the C workers; ``engine`` as the simulated engine in C (backends/engine.c), which the
workers submit to asynchronously (cryptfs/fuse/offload.c) — and the requests are not sent to
crypto workers.  Offloaded placements, the software backend and the converter's fault
injection stay on the trio plane, the model.
"""

import json
import logging
import os
import signal
from typing import Callable

import trio

from cryptfs.backends.base import Unavailable
from cryptfs.backends.engine_native import NativeEngine
from cryptfs.core import selftest
from cryptfs.core.config import Config, PipelineSection
from cryptfs.errors import ConfigError

try:
    from cryptfs.fuse import _plane
except ImportError as e:
    _plane = None
    UNAVAILABLE: str | None = f"the native plane is not built ({e})"
else:
    UNAVAILABLE = None

log = logging.getLogger(__name__)
#: backends that have a C implementation the plane calls
NATIVE_BACKENDS = ("multidu", "engine")


def _config_reason(config: Config) -> str | None:
    """Why ``config`` cannot be served natively (None: it can), as far as the config tells."""
    from cryptfs.backends import native as core
    p: PipelineSection = config.pipeline
    if UNAVAILABLE:
        return UNAVAILABLE
    if config.backend.name not in NATIVE_BACKENDS:
        return f"backend {config.backend.name} has no C implementation (native: " \
               f"{', '.join(NATIVE_BACKENDS)})"
    if core.UNAVAILABLE:
        return core.UNAVAILABLE
    if not (p.no_read_workqueue and p.no_write_workqueue):
        return "requests are offloaded to crypto workers (no_read/no_write_workqueue false)"
    if p.inject_alloc_failure:
        return "fault injection (inject_alloc_failure) is modelled on the trio plane"
    return None


def check_requested(config: Config) -> None:
    """Before the passphrase: ConfigError if ``plane = "native"`` was asked for and the
    config rules it out."""
    if config.pipeline.plane == "native":
        reason = _config_reason(config)
        if reason:
            raise ConfigError(f"config: [pipeline] plane = \"native\" cannot serve: {reason}")


def choose(stack) -> tuple[str, str]:
    """("native" | "trio", why) for an assembled stack."""
    plane = stack.config.pipeline.plane
    if plane == "trio":
        return "trio", "trio requested"
    reason = _config_reason(stack.config)
    if reason is None and stack.backend.name not in NATIVE_BACKENDS:
        reason = f"the stack serves on {stack.backend.name} ({stack.refused})"
    if reason is None:
        why = "native requested" if plane == "native" else \
            f"auto: {stack.backend.name} has a C implementation and requests run inline"
        return "native", why
    if plane == "native":
        raise ConfigError(f"config: [pipeline] plane = \"native\" cannot serve: {reason}")
    return "trio", f"auto: {reason}"


def prepare(stack) -> None:
    """Before a native session: the C implementation of the stack's backend where it is not
    the one assembled — the engine's C model replaces its trio model — self-tested as every
    backend is; one that fails or cannot run is logged and replaced by software (the plane
    must then be chosen again)."""
    if stack.backend.name != "engine" or isinstance(stack.backend, NativeEngine):
        return
    v, pipeline = stack.volume, stack.config.pipeline
    try:
        engine = NativeEngine(v.spec, v.key.buffer, stack.backend.options,
                              timeout=pipeline.completion_timeout)
    except Unavailable as e:
        stack.replace_backend(f"engine is unavailable on the native plane: {e}")
        return
    stack.use_backend(engine)
    problem = selftest.check(engine, v.spec, v.key.buffer, v.geometry, pipeline.mode)
    engine.stop()       # the daemon may fork: the session starts a fresh one where it serves
    if problem:
        log.warning("backend engine failed its self-test (%s): using software instead",
                    problem)
        stack.replace_backend(f"engine failed its self-test: {problem}")


def mount_options(config: Config) -> list[str]:
    """The mount options of a device, whichever plane serves it (default_permissions: the
    kernel checks modes)."""
    opts = ["fsname=cryptfs", "subtype=cryptfs", "default_permissions"]
    if config.device.read_only:
        opts.append("ro")
    if config.device.allow_other:
        opts.append("allow_other")
    return opts


def open_session(daemon, mountpoint: str):
    """Mount ``daemon``'s stack at ``mountpoint`` as a native session (not yet serving)."""
    s = daemon.stack
    g, p = s.volume.geometry, s.config.pipeline

    def stats() -> bytes:
        return json.dumps(daemon.status(), indent=2).encode() + b"\n"

    return _plane.Session(
        mountpoint, ["-o", ",".join(mount_options(s.config))], s.image.fd, g.payload_offset,
        g.size, g.sector_size, g.iv_step, g.iv_base, s.backend.core.capsule(),
        s.converter.multi_du, s.device.read_only, s.device.allow_discards, os.getuid(),
        os.getgid(), os.fstat(s.image.fd).st_mtime_ns, p.fuse_threads, p.max_background,
        p.max_background * 3 // 4, s.backend.split_bytes, s.backend.threads, stats,
        s.backend.capsule() if isinstance(s.backend, NativeEngine) else None,
        p.completion_timeout)


async def serve(daemon, mountpoint: str, ready: Callable[[], None]) -> None:
    """Mount, call ``ready()``, serve on C threads until unmounted or signalled, then flush,
    unmount and take the stack apart."""
    session = open_session(daemon, mountpoint)
    daemon.session = session
    daemon.discard_available = True         # FALLOCATE is the C plane's own handler
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, session)
            ready()
            log.info("serving %s at %s on the native plane", daemon.stack.image.path,
                     mountpoint)
            await trio.to_thread.run_sync(session.run)
            nursery.cancel_scope.cancel()
    finally:
        daemon.session = None
        session.close()
        daemon.close()
        log.info("closed %s", mountpoint)


async def _watch_signals(session) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: flushing and unmounting", signum)
            session.exit()
            return
