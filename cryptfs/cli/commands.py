"""``cryptfs``: open, close and inspect encrypted devices — cryptsetup-shaped.

Every failure a user can cause prints one line, ``cryptfs: <what is wrong>``, and exits with
the error's code (1 bad parameters, 2 bad key material, 4 bad image or mountpoint, 5 busy);
``--debug`` adds the traceback.  Secrets are never accepted on the command line.
"""

import argparse
import json
import logging
import os
import signal
import sys

from cryptfs import __version__
from cryptfs.cli import listing, prompts
from cryptfs.cli import luks as cli_luks
from cryptfs.core.config import Config, apply_flags, apply_setting, flags_config, load
from cryptfs.core.config import add_flags as add_config_flags
from cryptfs.errors import BusyError, CryptfsError, MountError
from cryptfs.formats.params import FormatOptions
from cryptfs.fuse.mounts import mount_type
from cryptfs.util import options

log = logging.getLogger("cryptfs")


class Parser(argparse.ArgumentParser):
    """argparse with cryptsetup's exit code for a usage error (1), and the usage of the
    command at fault."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _parser() -> Parser:
    parser = Parser(prog="cryptfs", description=(
        "A userspace dm-crypt: mount an encrypted image as a decrypted device file, and "
        "manage its LUKS key slots and header as cryptsetup does."))
    parser.add_argument("--version", action="version", version=f"cryptfs {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("open", parents=[common], help="mount IMAGE's device at MOUNTPOINT",
                       description="Mount IMAGE's decrypted device as MOUNTPOINT/device and "
                                   "return once it is ready.")
    p.add_argument("image")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--test-passphrase", action="store_true",
                   help="only check that the passphrase opens IMAGE (no MOUNTPOINT)")
    add_open_options(p)
    p.set_defaults(run=cmd_open)

    p = sub.add_parser("format", aliases=["luksFormat"], parents=[common],
                       help="write a new LUKS header",
                       description="Create a LUKS1 or LUKS2 header (key slot 0) on IMAGE, as "
                                   "cryptsetup luksFormat does; the data area is left as is.")
    p.add_argument("image")
    p.add_argument("new_key_file", nargs="?", metavar="NEW_KEY_FILE",
                   help="the new passphrase is this file's contents (as --key-file)")
    options.add_flags(p, FormatOptions)
    add_config_flags(p, only=cli_luks.KEY_FLAGS)
    p.add_argument("-q", "--batch-mode", action="store_true",
                   help="do not ask before overwriting an existing image's header")
    p.set_defaults(run=cmd_format)

    p = sub.add_parser("dump", aliases=["luksDump"], parents=[common], help="show a LUKS header",
                       description="Print IMAGE's LUKS header as cryptsetup luksDump does.")
    p.add_argument("image")
    add_config_flags(p, only={"header", "key_slot"} | cli_luks.KEY_FLAGS)
    p.add_argument("--dump-volume-key", action="store_true",
                   help="unlock and print the volume key (asks for the passphrase)")
    prompts.add_tries(p)
    p.set_defaults(run=cmd_dump)

    cli_luks.add_commands(sub, common)
    from cryptfs.cli import serve  # it reuses this module's helpers
    serve.add_command(sub, common)

    p = sub.add_parser("verify", parents=[common],
                       help="prove every crypto path writes the same ciphertext",
                       description="Replay one seeded random workload through every backend × "
                                   "mode × sector size × IV mode and compare the ciphertext "
                                   "images (sha256); exit 1 on any mismatch.")
    p.add_argument("--size", type=options.parse_size, default=4 << 20,
                   help="image size (default 4M)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backend", action="append", dest="backends", metavar="NAME",
                   help="limit to these backends (repeatable; default all)")
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser("bench", parents=[common], help="fio benchmarks, side by side",
                       description="Run fio against mounted devices and report medians, "
                                   "ratios and the daemon's CPU per GiB.")
    p.add_argument("study", nargs="?", default="peers",
                   choices=("peers", "multidu", "engine", "core", "nbd"),
                   help="peers (default): cryptfs vs qemu-storage-daemon vs a no-crypto "
                        "passthrough on one LUKS1 image; multidu: per-sector vs multi-DU on "
                        "the same backend; engine: the simulated engine on the native plane "
                        "(one job per bio or per data unit; a break-even map of engine speed "
                        "× setup against the CPU path; the same on the trio plane); core: the "
                        "native core against openssl speed; nbd: cryptfs serve vs "
                        "qemu-storage-daemon's NBD export vs nbdkit's C LUKS filter and "
                        "no-crypto ceilings, over fio's nbd engine")
    p.add_argument("--runtime", type=float, default=None, metavar="S",
                   help="seconds per fio run (default 3 for peers and nbd, 5 otherwise)")
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians are reported)")
    p.add_argument("--quick", action="store_true",
                   help="peers, nbd, engine: a short smoke run (few jobs or engines, 1 s, 1 "
                        "repetition)")
    p.add_argument("--sector-size", type=int, action="append", dest="sector_sizes",
                   metavar="BYTES", help="repeatable; default 512 and 4096")
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("stress", parents=[common],
                       help="fio crc32c verification through every crypto path",
                       description="fio --verify=crc32c (verify_fatal) through every backend × "
                                   "mode at 512- and 4096-byte sectors: sequential, random "
                                   "mixed read/write, 8 jobs, 1536-byte blocks at an odd "
                                   "offset; exit 1 on any mismatch.")
    p.add_argument("--quick", action="store_true", help="1 MiB per fio job instead of 16")
    p.set_defaults(run=cmd_stress)

    p = sub.add_parser("close", parents=[common], help="flush and unmount a device",
                       description="Flush, unmount and wait for the daemon to exit; or stop "
                                   "an NBD export (cryptfs serve), flushing.")
    p.add_argument("mountpoint", nargs="?", help="the mountpoint or its device file, or an "
                                                 "export's socket or ADDR:PORT")
    p.add_argument("--all", action="store_true",
                   help="close every open cryptfs device and export")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the daemon to flush and exit")
    p.set_defaults(run=cmd_close)

    p = sub.add_parser("status", parents=[common], help="list open devices, or show one",
                       description="Without an argument: every open cryptfs device (mountpoint, "
                                   "image, type, daemon pid, backend, log), then every NBD "
                                   "export.  With one: that device or export and its counters.")
    p.add_argument("mountpoint", nargs="?", help="the mountpoint or its device file, or an "
                                                 "export's socket or ADDR:PORT")
    p.add_argument("--json", action="store_true", help="the raw JSON of MOUNTPOINT/stats")
    p.set_defaults(run=cmd_status)
    return parser


def add_open_options(p: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """What ``open`` takes besides IMAGE and MOUNTPOINT (``serve`` takes it too): the config
    file, the config keys' flags (``only``: just these keys), --set, --tries, -f, --log-file."""
    p.add_argument("--config", metavar="FILE", help="TOML config; flags override it")
    add_config_flags(p, only=only)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config key, e.g. pipeline.mode=per_sector or "
                        "backend.engine.error_rate=0.01 (repeatable)")
    prompts.add_tries(p)
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay attached and log to stderr")
    p.add_argument("--log-file", metavar="FILE",
                   help=f"where the detached daemon logs (default {default_log_file()})")


def _commands(parser: Parser) -> dict[str, Parser]:
    """Command name (and alias) → its parser."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _command_first(argv: list[str], parser: Parser) -> list[str]:
    """cryptsetup takes options before the action too (``cryptsetup -q luksKillSlot IMG 1``):
    move the command to the front so argparse sees its options after it."""
    commands = _commands(parser)
    takes_value = {s for p in commands.values() for s, a in p._option_string_actions.items()
                   if a.nargs != 0}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        i += 2 if argv[i] in takes_value else 1
    if 0 < i < len(argv) and argv[i] in commands:
        return [argv[i]] + argv[:i] + argv[i + 1:]
    return argv


def _config(args: argparse.Namespace) -> Config:
    config = load(args.config)
    apply_flags(config, args)
    for setting in args.set:
        apply_setting(config, setting)
    return config


def _check_mountpoint(path: str) -> str:
    """The absolute mountpoint, if a device can be mounted there; a warning if it hides
    files (as mount(8) users expect to be told)."""
    path = os.path.abspath(path)
    kind = mount_type(path)
    if kind == listing.FSTYPE and listing.read_status(path) is None:
        raise BusyError(f"mountpoint {path} holds a cryptfs mount whose daemon is gone: "
                        f"run 'cryptfs close {path}' first")
    if kind is not None:
        raise BusyError(f"mountpoint {path} is busy: something is mounted there already")
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} does not exist or is not a directory")
    if os.listdir(path):
        log.warning("mountpoint %s is not empty: its files are hidden while the device is "
                    "open", path)
    return path


def cmd_open(args: argparse.Namespace) -> int:
    # Imported here so `close` and `status` do not pay for FUSE, trio and the ciphers.
    from cryptfs.core.volume import KeySource, with_tries
    from cryptfs.fuse import native
    from cryptfs.fuse.access import check_can_mount
    from cryptfs.fuse.daemon import Daemon
    from cryptfs.stack import assemble

    config = _config(args)
    if args.test_passphrase:
        return _test_passphrase(args, config)
    if not args.mountpoint:
        raise CryptfsError("open needs a MOUNTPOINT (or --test-passphrase)")
    mountpoint = _check_mountpoint(args.mountpoint)
    check_can_mount(mountpoint, config.device.allow_other)
    native.check_requested(config)
    keys = KeySource.of(config.crypto)
    try:
        daemon = Daemon(with_tries(keys, args.tries, lambda: assemble(args.image, config, keys)))
    except BusyError:
        _refuse_if_open(args.image)
        raise
    finally:
        keys.wipe()
    if args.foreground:
        return _run(daemon, mountpoint, ready=lambda: print(
            f"{mountpoint}/device is ready (pid {os.getpid()}); Ctrl-C or "
            f"'cryptfs close {mountpoint}' closes it", file=sys.stderr, flush=True))
    daemon.log_file = os.path.abspath(args.log_file or default_log_file())
    return _detach(daemon, mountpoint, daemon.log_file)


def _test_passphrase(args: argparse.Namespace, config: Config) -> int:
    """cryptsetup open --test-passphrase: unlock, and forget the key at once."""
    from cryptfs.core.image import Image
    from cryptfs.core.volume import KeySource, with_tries
    from cryptfs.formats import open_volume
    if args.mountpoint:
        raise CryptfsError("--test-passphrase takes no MOUNTPOINT")
    image = Image(args.image, read_only=True)
    keys = KeySource.of(config.crypto)
    try:
        with_tries(keys, args.tries, lambda: open_volume(image, config, keys)).close()
    finally:
        keys.wipe()
        image.close()
    return 0


def _refuse_if_open(path: str) -> None:
    """BusyError naming the mountpoint and pid, if an open cryptfs device holds ``path``."""
    where = listing.holder(path)
    if where:
        raise BusyError(f"image {path} is in use: open in cryptfs at {where}") from None


def default_log_file() -> str:
    """Where a detached daemon logs unless told: one file per user, each line tagged with the
    daemon's pid."""
    if os.geteuid() == 0:
        return "/var/log/cryptfs.log"
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "cryptfs", "cryptfs.log")


def _run(daemon, mountpoint: str, ready) -> int:
    import trio

    from cryptfs.fuse.daemon import serve
    trio.run(serve, daemon, mountpoint, ready)
    return 0


def _detach(daemon, mountpoint: str, log_file: str) -> int:
    """Fork the daemon; return once it reports the device ready (or print why it is not)."""
    os.makedirs(os.path.dirname(log_file), mode=0o700, exist_ok=True)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message == "ready":
            return 0
        os.waitpid(pid, 0)
        raise MountError(message or f"the daemon exited before {mountpoint}/device was ready")
    # the daemon
    os.close(read_end)
    os.setsid()
    status, reported = 1, False

    def ready():
        nonlocal reported
        _redirect_output(log_file)
        os.write(write_end, b"ready")
        os.close(write_end)
        reported = True

    try:
        status = _run(daemon, mountpoint, ready)
    except BaseException as e:
        log.exception("daemon failed")
        if not reported:        # the parent is still waiting: it prints this line
            os.write(write_end, f"mounting at {mountpoint} failed: {e}".encode())
    finally:
        os._exit(status)


def _redirect_output(log_file: str) -> None:
    """Detach stdio from the terminal; what the daemon logs goes to ``log_file``."""
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(null)
    os.close(target)


def cmd_format(args: argparse.Namespace) -> int:
    from cryptfs.formats.create import format_image

    o = options.from_args(FormatOptions, args)
    if os.path.exists(args.image) and not args.batch_mode and not o.header:
        prompts.confirm(f"This overwrites the header area of {args.image}; its data becomes "
                        "unreadable.")
    crypto = flags_config(args).crypto
    with prompts.new_passphrase(crypto.key_file or args.new_key_file,
                                "Enter passphrase for the new volume: ",
                                crypto.keyfile_offset, crypto.keyfile_size) as passphrase:
        uuid = format_image(args.image, o, passphrase, listing.holder)
    print(f"{o.version.upper()} header written to {o.header or args.image}, UUID {uuid}",
          file=sys.stderr)
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    from cryptfs.core.volume import KeySource, with_tries
    from cryptfs.formats import luks

    flags = flags_config(args)
    sys.stdout.reconfigure(errors="surrogateescape")      # header strings as their bytes
    with luks.HeaderFile(flags.device.header or args.image) as hdr:
        module, header = luks.read_header(hdr)
        if not args.dump_volume_key:
            sys.stdout.write(module.dump(header, hdr.path))
            return 0
        print("WARNING: the volume key gives access to all data on the volume; "
              "keep it secret.", file=sys.stderr)
        keys = KeySource.of(flags.crypto)
        slot = None if flags.device.key_slot < 0 else flags.device.key_slot
        try:
            key, _ = with_tries(keys, args.tries, lambda: luks.unlock(
                module, header, hdr, keys, slot))
        finally:
            keys.wipe()
        with key:
            sys.stdout.write(luks.volume_key_dump(module, header, hdr.path, key))
    return 0


def _require(*tools: str, installer: str) -> None:
    """CryptfsError naming the first of ``tools`` not on PATH."""
    import shutil
    for tool in tools:
        if not shutil.which(tool):
            raise CryptfsError(f"{tool} is not installed ({installer} installs it)")


def cmd_verify(args: argparse.Namespace) -> int:
    from cryptfs import backends
    from cryptfs.tools import verify
    from cryptfs.util.progress import run_bar
    names = args.backends or list(backends.REGISTRY)
    for name in names:
        backends.backend_class(name)            # unknown names fail here, with the list
    if args.size < 1 << 20 or args.size % 4096:
        raise CryptfsError("--size must be at least 1M and a multiple of 4096")
    total = len(verify.CIPHERS) * len(verify.LAYOUTS) * len(names) * len(verify.MODES)
    with run_bar(total, "verify") as bar:
        runs = verify.verify(args.size, args.seed, names, progress=lambda run: bar.update())
    print(f"cryptfs verify: {args.size} bytes, seed {args.seed}, sha256 of each ciphertext "
          "image (first 12 hex digits)\n")
    print(verify.table(runs, names))
    bad = verify.mismatches(runs)
    for run in bad:
        print(f"MISMATCH: {run.cipher} {run.sector_size}{' large' if run.large else ''} "
              f"{run.backend}/{run.mode} ({run.path})"
              f"{'' if run.reads_ok else ', reads differ from what was written'}")
    print(f"\n{len(runs) - len(bad)} of {len(runs)} runs identical"
          f"{'' if bad else ': every path writes the same ciphertext'}")
    return 1 if bad else 0


def cmd_bench(args: argparse.Namespace) -> int:
    import platform

    from cryptfs.tools.bench import core, engine, multidu, nbd, peers
    from cryptfs.util.progress import run_bar
    if args.study == "core":
        _require("openssl", installer="make bench")
        with run_bar(len(core.UNIT_SIZES) * (3 * args.reps + 2 * len(core.CIPHERS)),
                     "bench") as bar:
            print(core.study(args.runtime or 2, args.reps, progress=bar.update))
        return 0
    _require(*("fio", "qemu-img", "qemu-storage-daemon", "nbdkit")[
        :{"peers": 3, "nbd": 4}.get(args.study, 1)], installer="make bench")
    if args.study in ("peers", "nbd"):
        study = peers if args.study == "peers" else nbd
        runtime, reps = (1, 1) if args.quick else (args.runtime or 3, args.reps)
        total = reps * len(study.targets(args.quick)) * \
            len(peers.QUICK_JOBS if args.quick else peers.JOBS)
        with run_bar(total, "bench") as bar:
            report, _ = study.run(runtime, reps, args.quick, progress=bar.update)
        print(report)
        return 0
    args.runtime = args.runtime or 5
    print(f"cryptfs bench {args.study} — {platform.node()}, {os.cpu_count()} CPUs\n")
    if args.study == "engine":
        runtime, reps = (1, 1) if args.quick else (args.runtime, args.reps)
        with run_bar(reps * engine.runs(args.quick), "bench") as bar:
            print(engine.study(runtime, reps, args.quick, progress=bar.update))
        return 0
    sizes = tuple(args.sector_sizes or (512, 4096))
    total = len(sizes) * len(multidu.JOBS) * len(multidu.targets(512)) * args.reps
    with run_bar(total, "bench") as bar:
        rows = multidu.study(args.runtime, args.reps, sector_sizes=sizes, progress=bar.update)
    print(multidu.save(rows, f"`cryptfs bench multidu` — fio psync direct=1, "
                             f"{args.runtime:g} s × {args.reps} runs interleaved, medians\n\n"))
    return 0


def cmd_stress(args: argparse.Namespace) -> int:
    import time

    from cryptfs.tools import stress
    from cryptfs.util.progress import run_bar
    _require("fio", installer="make deps")
    start = time.monotonic()
    total = 2 * len(stress.PATHS) * len(stress.WORKLOADS)
    with run_bar(total, "stress") as bar:
        outcomes = stress.run(args.quick, progress=bar.update)
    failed = [o for o in outcomes if not o.ok]
    print(stress.markdown(outcomes))
    print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} fio runs verified without a "
          f"mismatch in {time.monotonic() - start:.0f} s")
    return 1 if failed else 0


def cmd_close(args: argparse.Namespace) -> int:
    if args.all == bool(args.mountpoint):
        raise CryptfsError("close needs a MOUNTPOINT or --all (not both)")
    if not args.all:
        export = listing.find_export(args.mountpoint)
        if export:
            listing.stop_export(export, args.timeout)
        else:
            _close(listing.mounted(args.mountpoint), args.timeout)
        return 0
    worst = 0
    closers = [lambda d=d: _close(d.mountpoint, args.timeout) for d in listing.open_devices()]
    closers += [lambda e=e: listing.stop_export(e, args.timeout)
                for e in listing.open_exports()]
    for close in closers:
        try:
            close()
        except CryptfsError as e:
            print(f"cryptfs: {e}", file=sys.stderr)
            worst = max(worst, e.exit_code)
    return worst


def _close(mountpoint: str, timeout: float) -> None:
    from cryptfs.fuse.unmount import unmount, wait_exit
    status = listing.read_status(mountpoint)
    if status is None:
        unmount(mountpoint, lazy=True)
        print(f"cleaned up {mountpoint}: its daemon had died", file=sys.stderr)
        return
    unmount(mountpoint, lazy=False)
    if not wait_exit(status["pid"], timeout):
        raise BusyError(f"unmounted {mountpoint}, but daemon {status['pid']} did not exit "
                        f"within {timeout:g} s")


def cmd_status(args: argparse.Namespace) -> int:
    if not args.mountpoint:
        devices, exports = listing.open_devices(), listing.open_exports()
        if args.json:
            print(json.dumps([{"mountpoint": d.mountpoint, "status": d.status,
                               "problem": d.problem} for d in devices] +
                             [{"export": e["address"], "status": e, "problem": ""}
                              for e in exports], indent=2))
        elif devices or exports:
            print("\n\n".join(filter(None, (devices and listing.table(devices),
                                              exports and listing.export_table(exports)))))
        else:
            print("no cryptfs device is open")
        return 0
    export = listing.find_export(args.mountpoint)
    if export:
        from cryptfs.cli.serve import format_export
        print(json.dumps(export, indent=2) if args.json else format_export(export))
        return 0
    mountpoint = listing.mounted(args.mountpoint)
    status = listing.read_status(mountpoint)
    if status is None:
        raise MountError(f"{mountpoint}: the daemon is gone (dead mount); "
                         f"run 'cryptfs close {args.mountpoint}'")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(format_status(mountpoint, status))
    return 0


def format_status(mountpoint: str, s: dict) -> str:
    lines = [
        f"{mountpoint}/device is active{' (read-only)' if s['read_only'] else ''}.",
        *device_lines(s),
        f"  backend:     {s['backend']} ({s['crypto_path']}; reads {s['reads']}, "
        f"writes {s['writes']}, queue depth {s['queue_depth']})",
        f"  crypto path: {s['crypto_path_reason']}",
        f"  plane:       {s.get('plane', 'trio')} ({s.get('plane_reason', '')})",
        *([f"  refused:     {s['backend_refused']}"] if s.get("backend_refused") else []),
        f"  discards:    {_discard_state(s)}",
        f"  daemon pid:  {s['pid']}",
        f"  log:         {s.get('log_file') or 'standard error (foreground)'}",
    ]
    return "\n".join(lines + counter_lines(s))


def device_lines(s: dict) -> list[str]:
    """What a status says of the device itself (a mount's or an export's)."""
    return [
        f"  type:        {s['type'].upper()}"
        f"{'  UUID ' + s['uuid'] if s.get('uuid') else ''}",
        f"  cipher:      {s['cipher']}",
        f"  keysize:     {s['key_bits']} bits",
        f"  image:       {s['image']}",
        f"  offset:      {s['payload_offset'] // 512} sectors",
        f"  size:        {s['size'] // 512} sectors ({s['size']} bytes)",
        f"  sector size: {s['sector_size']}"
        f"{' (iv_large_sectors)' if s['iv_large_sectors'] else ''}",
    ]


def counter_lines(s: dict) -> list[str]:
    """The counters of a status, the backend's included, one per line."""
    counters = {**s["counters"], **{f"backend.{k}": v for k, v in s["backend_stats"].items()}}
    latency = counters.pop("bio_latency", None)
    if latency:
        counters["bio latency (µs)"] = "  ".join(f"{k[:-3]} {v:g}" for k, v in latency.items())
    width = max(map(len, counters), default=0)
    return ["  counters:"] + [f"    {k:<{width}}  {v}" for k, v in sorted(counters.items())]


def _discard_state(s: dict) -> str:
    if not s["allow_discards"]:
        return "off"
    return "on" if s["discard_available"] else "on, but unavailable (pyfuse3 fallocate hook failed)"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = _command_first(sys.argv[1:] if argv is None else list(argv), parser)
    commands = _commands(parser)
    if argv and argv[0] in commands:
        # cryptsetup mixes positionals and options: IMAGE --key-file F NEW_KEY_FILE
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
    else:
        args = parser.parse_args(argv)      # --help, --version or a usage error
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s cryptfs[%(process)d] %(levelname)s %(name)s: "
                               "%(message)s")
    try:
        code = args.run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:             # the reader left (cryptfs dump | head): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except CryptfsError as e:
        if args.debug:
            log.exception("failed")
        print(f"cryptfs: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
