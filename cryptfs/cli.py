"""``cryptfs``: open, close and inspect encrypted devices — cryptsetup-shaped.

Every failure a user can cause prints one line, ``cryptfs: <what is wrong>``, and exits with
the error's code (1 bad parameters, 2 bad key material, 4 bad image or mountpoint, 5 busy);
``--debug`` adds the traceback.  Secrets are never accepted on the command line.
"""

import argparse
import errno
import json
import logging
import os
import signal
import sys

from . import __version__
from .config import Config, apply_setting, load
from .errors import BusyError, CryptfsError, KeyMaterialError, MountError
from .mounts import mount_type

log = logging.getLogger("cryptfs")
FSTYPE = "fuse.cryptfs"

# flag → (config section, key): the options that mirror config keys
_OVERRIDES = {
    "type": ("device", "type"), "offset": ("device", "offset"), "skip": ("device", "skip"),
    "header": ("device", "header"), "key_slot": ("device", "key_slot"),
    "read_only": ("device", "read_only"), "allow_discards": ("device", "allow_discards"),
    "allow_other": ("device", "allow_other"),
    "cipher": ("crypto", "cipher"), "key_size": ("crypto", "key_size"),
    "key_file": ("crypto", "key_file"), "hash": ("crypto", "hash"),
    "sector_size": ("crypto", "sector_size"), "iv_large_sectors": ("crypto", "iv_large_sectors"),
    "backend": ("backend", "name"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryptfs", description=(
        "A userspace dm-crypt: mount an encrypted image as a decrypted device file."))
    parser.add_argument("--version", action="version", version=f"cryptfs {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("open", parents=[common], help="mount IMAGE's device at MOUNTPOINT",
                       description="Mount IMAGE's decrypted device as MOUNTPOINT/device.")
    p.add_argument("image")
    p.add_argument("mountpoint")
    p.add_argument("--config", metavar="FILE", help="TOML config; flags override it")
    p.add_argument("--type", help="luks (default: LUKS1 or LUKS2 from the header), luks1, "
                                  "luks2, plain")
    p.add_argument("-d", "--key-file", metavar="FILE",
                   help="LUKS: the passphrase is FILE's contents; plain: the raw key; "
                        "'-' reads stdin; without it cryptfs asks")
    p.add_argument("-S", "--key-slot", type=int, metavar="N", help="LUKS: try only slot N")
    p.add_argument("--header", metavar="FILE", help="LUKS: detached header file")
    p.add_argument("-c", "--cipher", help="plain: cipher spec (default aes-xts-plain64)")
    p.add_argument("-s", "--key-size", type=int, metavar="BITS", help="plain: key size in bits")
    p.add_argument("--hash", help="plain: passphrase hash (default sha256)")
    p.add_argument("-o", "--offset", type=int, metavar="SECTORS",
                   help="payload start in the image, 512-byte sectors")
    p.add_argument("-p", "--skip", type=int, metavar="SECTORS",
                   help="IV offset, 512-byte sectors")
    p.add_argument("--sector-size", type=int, metavar="BYTES", help="512..4096, power of two")
    p.add_argument("--iv-large-sectors", action="store_const", const=True,
                   help="IVs count sector-size units instead of 512-byte sectors")
    p.add_argument("-r", "--read-only", action="store_const", const=True)
    p.add_argument("--allow-discards", action="store_const", const=True,
                   help="punch the ciphertext on discard")
    p.add_argument("--allow-other", action="store_const", const=True,
                   help="let other users reach the mount (the device stays 0600)")
    p.add_argument("--backend", help="crypto backend: multidu (default), software, engine")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config key, e.g. pipeline.mode=per_sector or "
                        "backend.engine.error_rate=0.01 (repeatable)")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay attached and log to stderr")
    p.add_argument("--log-file", metavar="FILE", help="where the daemon logs once detached")
    p.set_defaults(run=cmd_open)

    p = sub.add_parser("format", parents=[common], help="write a new LUKS header",
                       description="Create a LUKS1 or LUKS2 header (key slot 0) on IMAGE, as "
                                   "cryptsetup luksFormat does; the data area is left as is.")
    p.add_argument("image")
    p.add_argument("--type", choices=("luks1", "luks2"), default="luks2")
    p.add_argument("-c", "--cipher", default="aes-xts-plain64")
    p.add_argument("-s", "--key-size", type=int, default=0, metavar="BITS")
    p.add_argument("--sector-size", type=int, default=512, metavar="BYTES")
    p.add_argument("--hash", default="sha256", help="PBKDF2, AF splitter and digest hash")
    p.add_argument("--pbkdf", choices=("pbkdf2", "argon2id", "argon2i"),
                   help="default: pbkdf2 for LUKS1, argon2id for LUKS2")
    p.add_argument("-i", "--iter-time", type=int, default=2000, metavar="MS",
                   help="time unlocking should take")
    p.add_argument("--pbkdf-force-iterations", type=int, default=0, metavar="N",
                   help="fixed PBKDF2 iterations or Argon2 time cost instead of timing")
    p.add_argument("--pbkdf-memory", type=int, default=1024 * 1024, metavar="KIB")
    p.add_argument("--pbkdf-parallel", type=int, default=4, metavar="N")
    p.add_argument("--size", type=_size, default=0, help="create IMAGE with this size "
                                                         "(bytes, or with K/M/G suffix)")
    p.add_argument("--header", metavar="FILE", help="write a detached header to FILE")
    p.add_argument("-d", "--key-file", metavar="FILE",
                   help="the passphrase is FILE's contents ('-': stdin)")
    p.add_argument("-q", "--batch-mode", action="store_true",
                   help="do not ask before overwriting an existing image's header")
    p.set_defaults(run=cmd_format)

    p = sub.add_parser("dump", parents=[common], help="show a LUKS header",
                       description="Print IMAGE's LUKS header as cryptsetup luksDump does.")
    p.add_argument("image")
    p.add_argument("--header", metavar="FILE", help="detached header file")
    p.add_argument("--dump-volume-key", action="store_true",
                   help="unlock and print the volume key (asks for the passphrase)")
    p.add_argument("-d", "--key-file", metavar="FILE")
    p.add_argument("-S", "--key-slot", type=int, metavar="N")
    p.set_defaults(run=cmd_dump)

    p = sub.add_parser("verify", parents=[common],
                       help="prove every crypto path writes the same ciphertext",
                       description="Replay one seeded random workload through every backend × "
                                   "mode × sector size × IV mode and compare the ciphertext "
                                   "images (sha256); exit 1 on any mismatch.")
    p.add_argument("--size", type=_size, default=4 << 20, help="image size (default 4M)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backend", action="append", dest="backends", metavar="NAME",
                   help="limit to these backends (repeatable; default all)")
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser("bench", parents=[common], help="fio benchmarks, side by side",
                       description="Run fio against mounted devices and report medians, "
                                   "ratios and the daemon's CPU per GiB.")
    p.add_argument("study", nargs="?", default="peers",
                   choices=("peers", "multidu", "engine", "core"),
                   help="peers (default): cryptfs vs qemu-storage-daemon vs a no-crypto "
                        "passthrough on one LUKS1 image; multidu: per-sector vs multi-DU on "
                        "the same backend; engine: the simulated engine, native multi-DU "
                        "on and off, and where offload beats the CPU; core: the native core "
                        "against openssl speed")
    p.add_argument("--runtime", type=float, default=None, metavar="S",
                   help="seconds per fio run (default 3 for peers, 5 otherwise)")
    p.add_argument("--reps", type=int, default=3, help="repetitions (medians are reported)")
    p.add_argument("--quick", action="store_true",
                   help="peers: a short smoke run (2 jobs, 3 targets, 1 s, 1 repetition)")
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

    p = sub.add_parser("close", parents=[common], help="flush and unmount MOUNTPOINT")
    p.add_argument("mountpoint")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the daemon to flush and exit")
    p.set_defaults(run=cmd_close)

    p = sub.add_parser("status", parents=[common], help="show an open device and its counters")
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true", help="the raw JSON of MOUNTPOINT/stats")
    p.set_defaults(run=cmd_status)
    return parser


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in units:
            return int(text[:-1]) * units[text[-1]]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (e.g. 64M)") from None


def _config(args: argparse.Namespace) -> Config:
    config = load(args.config)
    for flag, (section, key) in _OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is not None:
            config.set(section, key, value, origin="--" + flag.replace("_", "-"))
    for setting in getattr(args, "set", []):
        apply_setting(config, setting)
    return config


def _check_mountpoint(path: str) -> str:
    path = os.path.abspath(path)
    if mount_type(path) is not None:
        raise BusyError(f"mountpoint {path} is busy: something is mounted there already")
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} does not exist or is not a directory")
    return path


def cmd_open(args: argparse.Namespace) -> int:
    # Imported here so `close` and `status` do not pay for FUSE, trio and the ciphers.
    from .daemon import Daemon
    from .stack import assemble
    from .volume import KeySource

    config = _config(args)
    mountpoint = _check_mountpoint(args.mountpoint)
    keys = KeySource(config.crypto.key_file)
    try:
        daemon = Daemon(assemble(args.image, config, keys))
    finally:
        keys.wipe()
    if args.foreground:
        return _run(daemon, mountpoint, ready=lambda: None)
    return _detach(daemon, mountpoint, args.log_file)


def _run(daemon, mountpoint: str, ready) -> int:
    import trio

    from .daemon import serve
    trio.run(serve, daemon, mountpoint, ready)
    return 0


def _detach(daemon, mountpoint: str, log_file: str | None) -> int:
    """Fork the daemon; return once it reports the device ready (or print why it is not)."""
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


def _redirect_output(log_file: str | None) -> None:
    """Detach stdio from the terminal; keep logging only if a log file was asked for."""
    target = os.open(log_file or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(null)
    os.close(target)


def cmd_format(args: argparse.Namespace) -> int:
    from .formats.create import FormatOptions, format_image
    from .keys import read_key_file, read_passphrase

    if os.path.exists(args.image) and not args.batch_mode and not args.header:
        _confirm(f"This overwrites the header area of {args.image}; its data becomes "
                 "unreadable.")
    options = FormatOptions(
        version=args.type, cipher=args.cipher, key_bits=args.key_size,
        sector_size=args.sector_size, hash=args.hash, pbkdf=args.pbkdf or "",
        iter_time=args.iter_time, force_iterations=args.pbkdf_force_iterations,
        memory=args.pbkdf_memory, parallel=args.pbkdf_parallel, size=args.size,
        header=args.header or "")
    if args.key_file:
        passphrase = read_key_file(args.key_file)
    else:
        passphrase = read_passphrase("Enter passphrase for the new volume: ")
        if sys.stdin.isatty():
            with read_passphrase("Verify passphrase: ") as again:
                if again.buffer != passphrase.buffer:
                    passphrase.wipe()
                    raise KeyMaterialError("Passphrases do not match.")
    with passphrase:
        uuid = format_image(args.image, options, passphrase)
    print(f"{args.type.upper()} header written to {args.header or args.image}, UUID {uuid}",
          file=sys.stderr)
    return 0


def _confirm(warning: str) -> None:
    if not sys.stdin.isatty():
        raise BusyError(f"{warning} Add --batch-mode to confirm.")
    answer = input(f"WARNING: {warning}\nAre you sure? (Type 'yes' in capital letters): ")
    if answer != "YES":
        raise CryptfsError("Operation aborted.")


def cmd_dump(args: argparse.Namespace) -> int:
    from .formats import luks
    from .volume import KeySource

    sys.stdout.reconfigure(errors="surrogateescape")      # header strings as their bytes
    with luks.HeaderFile(args.header or args.image) as hdr:
        module, header = luks.read_header(hdr)
        if not args.dump_volume_key:
            sys.stdout.write(module.dump(header, hdr.path))
            return 0
        print("WARNING: the volume key gives access to all data on the volume; "
              "keep it secret.", file=sys.stderr)
        keys = KeySource(args.key_file)
        try:
            key, _ = luks.unlock(module, header, hdr, keys, args.key_slot)
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
    import backends

    from . import verify
    from .progress import run_bar
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

    from .bench import core, engine, multidu, peers
    from .progress import run_bar
    if args.study == "core":
        _require("openssl", installer="make bench")
        with run_bar(args.reps * len(core.UNIT_SIZES) * 3, "bench") as bar:
            print(core.study(args.runtime or 2, args.reps, progress=bar.update))
        return 0
    _require(*("fio", "qemu-img", "qemu-storage-daemon")[:1 if args.study != "peers" else 3],
             installer="make bench")
    if args.study == "peers":
        runtime, reps = (1, 1) if args.quick else (args.runtime or 3, args.reps)
        total = reps * len(peers.targets(args.quick)) * \
            len(peers.QUICK_JOBS if args.quick else peers.JOBS)
        with run_bar(total, "bench") as bar:
            report, _ = peers.run(runtime, reps, args.quick, progress=bar.update)
        print(report)
        return 0
    args.runtime = args.runtime or 5
    print(f"cryptfs bench {args.study} — {platform.node()}, {os.cpu_count()} CPUs\n")
    if args.study == "engine":
        total = args.reps * len(engine.COMPARE_JOBS) * len(engine.compare_targets()) + \
            len(engine.sweep_targets())
        with run_bar(total, "bench") as bar:
            print(engine.study(args.runtime, args.reps, progress=bar.update))
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

    from . import stress
    from .progress import run_bar
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


def _mounted(path: str) -> str:
    path = os.path.abspath(path)
    kind = mount_type(path)
    if kind is None:
        raise MountError(f"{path} is not mounted")
    if kind != FSTYPE:
        raise MountError(f"{path} is not a cryptfs mount (it is {kind})")
    return path


def _read_status(mountpoint: str) -> dict | None:
    """The daemon's status, or None if its process is gone (a dead mount)."""
    try:
        with open(os.path.join(mountpoint, "stats"), "rb") as f:
            return json.load(f)
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV):    # no daemon
            return None
        raise MountError(f"cannot read {mountpoint}/stats: {e.strerror}") from None


def cmd_close(args: argparse.Namespace) -> int:
    from .unmount import unmount, wait_exit
    mountpoint = _mounted(args.mountpoint)
    status = _read_status(mountpoint)
    if status is None:
        unmount(mountpoint, lazy=True)
        print(f"cleaned up {mountpoint}: its daemon had died", file=sys.stderr)
        return 0
    unmount(mountpoint, lazy=False)
    if not wait_exit(status["pid"], args.timeout):
        raise BusyError(f"unmounted {mountpoint}, but daemon {status['pid']} did not exit "
                        f"within {args.timeout:g} s")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    mountpoint = _mounted(args.mountpoint)
    status = _read_status(mountpoint)
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
        f"  type:        {s['type'].upper()}"
        f"{'  UUID ' + s['uuid'] if s.get('uuid') else ''}",
        f"  cipher:      {s['cipher']}",
        f"  keysize:     {s['key_bits']} bits",
        f"  image:       {s['image']}",
        f"  offset:      {s['payload_offset'] // 512} sectors",
        f"  size:        {s['size'] // 512} sectors ({s['size']} bytes)",
        f"  sector size: {s['sector_size']}"
        f"{' (iv_large_sectors)' if s['iv_large_sectors'] else ''}",
        f"  backend:     {s['backend']} ({s['crypto_path']}; reads {s['reads']}, "
        f"writes {s['writes']}, queue depth {s['queue_depth']})",
        f"  crypto path: {s['crypto_path_reason']}",
        *([f"  refused:     {s['backend_refused']}"] if s.get("backend_refused") else []),
        f"  discards:    {_discard_state(s)}",
        f"  daemon pid:  {s['pid']}",
        "  counters:",
    ]
    counters = {**s["counters"], **{f"backend.{k}": v for k, v in s["backend_stats"].items()}}
    latency = counters.pop("bio_latency", None)
    if latency:
        counters["bio latency (µs)"] = "  ".join(f"{k[:-3]} {v:g}" for k, v in latency.items())
    width = max(map(len, counters), default=0)
    lines += [f"    {k:<{width}}  {v}" for k, v in sorted(counters.items())]
    return "\n".join(lines)


def _discard_state(s: dict) -> str:
    if not s["allow_discards"]:
        return "off"
    return "on" if s["discard_available"] else "on, but unavailable (pyfuse3 fallocate hook failed)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
