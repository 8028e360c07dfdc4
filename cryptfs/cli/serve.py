"""``cryptfs serve``: IMAGE's decrypted device as an NBD export, through nbdkit — for a VM
(QEMU attaches NBD), another host, a container without FUSE, or any NBD tool.

It takes ``open``'s options (key material, --header, plain mode, -r, --allow-discards,
--config, --set, --tries, -f, --log-file), checks everything it can before the passphrase
(nbdkit and its Python plugin, where to listen, TLS files, the backend, the image, its locks
and header), then starts nbdkit (:mod:`cryptfs.tools.nbd`) and returns once the export listens.
``status`` lists exports beside mounts and ``close SOCKET|ADDR:PORT`` stops one.
"""

import argparse
import os
import signal
import subprocess
import sys
from dataclasses import fields

from cryptfs.cli import commands
from cryptfs.core.config import SECTIONS
from cryptfs.errors import BusyError, ConfigError

#: open's config flags that mean something for an export (allow_other is FUSE's)
FLAGS = {f.name for cls in SECTIONS.values() for f in fields(cls)
         if f.metadata.get("flags")} - {"allow_other"}


def add_command(sub, common: argparse.ArgumentParser) -> None:
    from cryptfs.tools.nbd import DEFAULT_THREADS
    p = sub.add_parser("serve", parents=[common], help="serve IMAGE's device over NBD (nbdkit)",
                       description="Serve IMAGE's decrypted device as an NBD export through "
                                   "nbdkit, on a Unix socket or a TCP port (127.0.0.1 unless "
                                   "--bind says otherwise), and return once it is ready.")
    p.add_argument("image", metavar="IMAGE")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="PATH", help="listen on this Unix socket")
    where.add_argument("--port", type=int, metavar="N", help="listen on this TCP port")
    p.add_argument("--bind", metavar="ADDR",
                   help="with --port: the address to listen on (default 127.0.0.1)")
    p.add_argument("--tls-psk", metavar="FILE",
                   help="require TLS with these pre-shared keys (nbdkit --tls-psk)")
    p.add_argument("--tls-certificates", metavar="DIR",
                   help="require TLS with the X.509 files in DIR (nbdkit --tls-certificates)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                   help=f"nbdkit's worker threads per connection (default: one per CPU, "
                        f"{DEFAULT_THREADS} here)")
    commands.add_open_options(p, only=FLAGS)
    p.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from cryptfs.core.volume import KeySource, with_tries
    from cryptfs.tools import nbd

    config = commands._config(args)
    if config.device.header:            # nbdkit may not start where we are
        config.set("device", "header", os.path.abspath(config.device.header))
    if args.bind and args.port is None:
        raise ConfigError("--bind goes with --port (a Unix socket has no address)")
    if args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    listen = nbd.Listen(args.socket, args.port, args.bind or "127.0.0.1")
    tls = nbd.Tls(args.tls_psk, args.tls_certificates)
    nbd.check_nbdkit()
    tls.check()
    nbd.refuse_asynchronous(config)
    listen.check()
    try:
        asked = nbd.probe(args.image, config)
    except BusyError:
        commands._refuse_if_open(args.image)
        raise
    log_file = None
    if not args.foreground:
        log_file = os.path.abspath(args.log_file or commands.default_log_file())
        os.makedirs(os.path.dirname(log_file), mode=0o700, exist_ok=True)
    keys = KeySource.of(config.crypto)

    def attempt() -> nbd.Server:
        with keys.read(*asked[0], **asked[1]) as secret:
            return nbd.launch(args.image, config, secret, listen, tls, threads=args.threads,
                              log_file=log_file, debug=args.debug)
    try:
        server = with_tries(keys, args.tries, attempt)
    finally:
        keys.wipe()
    stop = "Ctrl-C or " if args.foreground else ""
    print(f"{server.entry['uri']} serves {args.image} (nbdkit pid {server.entry['pid']}), "
          f"listening on {listen.where()}{'; TLS required' if tls.kind else ''}; "
          f"{stop}'cryptfs close {listen.address}' stops it", file=sys.stderr, flush=True)
    if not listen.loopback and not tls.kind:
        print(f"cryptfs: warning: no TLS: whoever reaches {listen.address} reads and writes "
              "the decrypted device (--tls-psk or --tls-certificates)", file=sys.stderr)
    return _attached(server.process) if args.foreground else 0


def _attached(process: subprocess.Popen) -> int:
    """Stay with a foreground nbdkit until it exits: Ctrl-C reaches it from the terminal,
    SIGTERM and SIGHUP sent here are passed on."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda n, _: process.send_signal(n))
    while True:
        try:
            status = process.wait()
            break
        except KeyboardInterrupt:
            continue
    return 0 if status in (0, -signal.SIGINT, -signal.SIGTERM) else 1


def format_export(e: dict) -> str:
    """``cryptfs status SOCKET|ADDR:PORT``: one export and its counters."""
    lines = [
        f"{e['uri']} is served{' (read-only)' if e['read_only'] else ''}.",
        *commands.device_lines(e),
        f"  backend:     {e['backend']} ({e['crypto_path']}; {e['thread_model']} requests on "
        f"{e['threads']} nbdkit threads per connection)",
        f"  crypto path: {e['crypto_path_reason']}",
        *([f"  refused:     {e['backend_refused']}"] if e.get("backend_refused") else []),
        f"  discards:    {'on' if e['allow_discards'] else 'off'}",
        f"  listening:   {e['address']}{' (TLS ' + e['tls'] + ')' if e['tls'] else ''}; "
        f"multi-conn {'on' if e['multi_conn'] else 'off'}; {e['connections']} connection(s) "
        f"now, {e['connections_total']} in all",
        f"  nbdkit pid:  {e['pid']}",
        f"  log:         {e.get('log_file') or 'standard error (foreground)'}",
        "  counters:",
    ]
    counters = {**e["counters"], **{f"backend.{k}": v for k, v in e["backend_stats"].items()}}
    width = max(map(len, counters), default=0)
    return "\n".join(lines + [f"    {k:<{width}}  {v}" for k, v in sorted(counters.items())])
