"""The key slot and header commands, named and taking arguments as cryptsetup's do, so a
cryptsetup script runs with cryptfs in its place: luksAddKey, luksChangeKey, luksRemoveKey,
luksKillSlot, luksHeaderBackup, luksHeaderRestore, luksUUID, isLuks and config (each with a
lower-case alias).

Prompts, confirmations, ``-v`` messages and exit codes are cryptsetup's, with one difference:
where cryptsetup asks for confirmation and assumes yes without a terminal, cryptfs needs
``--batch-mode`` there.  Changes refuse while the image (or its detached header) is open in
cryptfs: close it first.

The LUKS modules are imported by the commands that use them, so that ``status`` and ``close``
do not pay for them.
"""

import argparse
import sys

from cryptfs.cli import listing
from cryptfs.cli.prompts import add_tries, confirm, new_passphrase
from cryptfs.core.config import add_flags as add_config_flags
from cryptfs.core.config import flags_config
from cryptfs.core.volume import KeySource, with_tries
from cryptfs.crypto.keys import Secret
from cryptfs.errors import BusyError, CryptfsError, FormatError, NoPassphrase, WrongPassphrase
from cryptfs.formats.params import PRIORITIES, PbkdfOptions, kdf_kind, new_kdf
from cryptfs.util import options


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    def command(name: str, alias: str, run, help: str, keys: bool = True,
                pbkdf: bool = False):
        p = sub.add_parser(name, aliases=[alias], parents=[common], help=help,
                           description=f"{help[0].upper()}{help[1:]} (as cryptsetup {name}).")
        p.add_argument("image", metavar="IMAGE", help="the LUKS image (or detached header)")
        add_config_flags(p, only={"header"} | (KEY_FLAGS if keys else set()))
        if keys:
            add_tries(p)
        if pbkdf:
            options.add_flags(p, PbkdfOptions)
            p.add_argument("--new-keyfile-offset", type=int, default=0, metavar="BYTES")
            p.add_argument("--new-keyfile-size", type=int, default=0, metavar="BYTES")
        p.add_argument("--type", choices=("luks", "luks1", "luks2"), default="luks",
                       help="insist on this LUKS version")
        p.add_argument("-q", "--batch-mode", action="store_true",
                       help="do not ask for confirmation")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="say what was done, as cryptsetup -v does")
        p.set_defaults(run=run)
        return p

    p = command("luksAddKey", "add-key", cmd_add_key, "add a passphrase to a LUKS key slot",
                pbkdf=True)
    p.add_argument("new_key_file", nargs="?", metavar="NEW_KEY_FILE",
                   help="the new passphrase is this file's contents")
    p.add_argument("-S", "--key-slot", type=int, metavar="N",
                   help="the new key slot (cryptsetup's old meaning; see --new-key-slot)")
    p.add_argument("--new-key-slot", type=int, metavar="N",
                   help="the new key slot (default: the first free one)")
    p.add_argument("--new-keyfile", metavar="FILE", help="as NEW_KEY_FILE")

    p = command("luksChangeKey", "change-key", cmd_change_key,
                "change a passphrase (the old one stops working)", pbkdf=True)
    p.add_argument("new_key_file", nargs="?", metavar="NEW_KEY_FILE",
                   help="the new passphrase is this file's contents")
    p.add_argument("-S", "--key-slot", type=int, metavar="N",
                   help="change only this key slot's passphrase")

    p = command("luksRemoveKey", "remove-key", cmd_remove_key,
                "remove the key slot a passphrase opens")
    p.add_argument("key_file_arg", nargs="?", metavar="KEY_FILE",
                   help="the passphrase to remove is this file's contents")
    p = command("luksKillSlot", "kill-slot", cmd_kill_slot, "remove a key slot by number")
    p.add_argument("slot", type=int, metavar="SLOT", help="the key slot to wipe")

    p = command("luksHeaderBackup", "header-backup", cmd_header_backup,
                "save the header and key slots to a file", keys=False)
    p.add_argument("--header-backup-file", required=True, metavar="FILE")
    p = command("luksHeaderRestore", "header-restore", cmd_header_restore,
                "write a saved header and key slots back", keys=False)
    p.add_argument("--header-backup-file", required=True, metavar="FILE")

    p = command("luksUUID", "uuid", cmd_uuid, "print or set the UUID", keys=False)
    p.add_argument("--uuid", metavar="UUID", help="set this UUID")
    command("isLuks", "is-luks", cmd_is_luks,
            "exit 0 if IMAGE has a LUKS header (of --type), 1 if not", keys=False)

    p = command("config", "luksConfig", cmd_config,
                "set the LUKS2 label, subsystem or a key slot's priority", keys=False)
    p.add_argument("--label", metavar="TEXT", help="LUKS2 label ('' clears it)")
    p.add_argument("--subsystem", metavar="TEXT", help="LUKS2 subsystem ('' clears it)")
    p.add_argument("--priority", choices=tuple(PRIORITIES),
                   help="key slot priority (with -S)")
    p.add_argument("-S", "--key-slot", type=int, metavar="N")


def _path(args) -> str:
    return flags_config(args).device.header or args.image


def _say(args, *lines: str) -> None:
    if args.verbose:
        print("\n".join(lines))


def _confirm(args, warning: str) -> None:
    if not args.batch_mode:
        confirm(warning)


def _refuse_if_open(path: str) -> None:
    where = listing.holder(path)
    if where:
        raise BusyError(f"{path} is open in cryptfs at {where}; close it first "
                        "('cryptfs close')")


def _load(args, key_slots: bool = True):
    """The header, and a refusal before any passphrase if cryptfs has the image open — or, to
    change ``key_slots``, if it is one cryptfs cannot open (reencryption, integrity...)."""
    from cryptfs.formats import keyslots
    path = _path(args)
    loaded = keyslots.load(path, args.type)
    if key_slots:
        loaded.module.check_supported(loaded.header)
    _refuse_if_open(path)
    return loaded


#: the config keys that say where a passphrase comes from, as flags
KEY_FLAGS = {"key_file", "keyfile_offset", "keyfile_size"}


def _unlock(args, loaded, prompt: str, slot: int | None = None,
            key_file: str | None = None) -> tuple[Secret, int]:
    from cryptfs.formats import keyslots
    keys = KeySource.of(flags_config(args).crypto, prompt, key_file)

    def attempt():
        with keys.read() as passphrase:
            return keyslots.unlock(loaded, passphrase, slot)
    try:
        key, used = with_tries(keys, args.tries, attempt)
    finally:
        keys.wipe()
    _say(args, f"Key slot {used} unlocked.")
    return key, used


def _pbkdf(args, loaded) -> PbkdfOptions:
    o = options.from_args(PbkdfOptions, args)
    kdf_kind(o, loaded.version)
    return o


def _new_kdf(o: PbkdfOptions, loaded, key: Secret):
    return new_kdf(o, loaded.version, len(key),
                   loaded.header.hash if loaded.version == "luks1" else None)


def _new_passphrase(args, prompt: str, key_file: str | None) -> Secret:
    return new_passphrase(key_file, prompt, args.new_keyfile_offset, args.new_keyfile_size)


def cmd_add_key(args) -> int:
    from cryptfs.formats import keyslots
    loaded = _load(args)
    slots = keyslots.slots_of(loaded)
    wanted = args.new_key_slot
    if wanted is None and args.key_slot is not None:
        if not args.batch_mode:
            print("WARNING: The --key-slot parameter is used for new keyslot number.")
        wanted = args.key_slot
    slot = slots.check_new(wanted)
    o = _pbkdf(args, loaded)
    key, used = _unlock(args, loaded, "Enter any existing passphrase: ")
    with key, _new_passphrase(args, "Enter new passphrase for key slot: ",
                              args.new_key_file or args.new_keyfile) as new:
        kdf = _new_kdf(o, loaded, key)
        with keyslots.editing(loaded, listing.holder) as f:
            slots.add(f, slot, key, new, kdf, used, o.hash)
    _say(args, f"Key slot {slot} created.", "Command successful.")
    return 0


def cmd_change_key(args) -> int:
    from cryptfs.formats import keyslots
    loaded = _load(args)
    slots = keyslots.slots_of(loaded)
    if args.key_slot is not None:
        slots.check_active(args.key_slot)
    if loaded.version == "luks1":
        slots.check_new(None)           # a free slot to move through
    o = _pbkdf(args, loaded)
    key, used = _unlock(args, loaded, "Enter passphrase to be changed: ", args.key_slot)
    with key, _new_passphrase(args, "Enter new passphrase: ", args.new_key_file) as new:
        kdf = _new_kdf(o, loaded, key)
        with keyslots.editing(loaded, listing.holder) as f:
            slot = slots.change(f, used, key, new, kdf, o.hash,
                                keep_slot=args.key_slot is not None)
    _say(args, f"Key slot {slot} created.", "Command successful.")
    return 0


def cmd_remove_key(args) -> int:
    loaded = _load(args)
    key, slot = _unlock(args, loaded, "Enter passphrase to be deleted: ",
                        key_file=args.key_file_arg)
    key.wipe()
    _say(args, f"Keyslot {slot} is selected for deletion.")
    if loaded.slots() == [slot]:
        _confirm(args, "This is the last keyslot. Device will become unusable after purging "
                       "this key.")
    _remove(args, loaded, slot)
    return 0


def cmd_kill_slot(args) -> int:
    from cryptfs.formats import keyslots
    loaded = _load(args)
    slots = keyslots.slots_of(loaded)
    slots.check_active(args.slot)
    _say(args, f"Keyslot {args.slot} is selected for deletion.")
    last = loaded.slots() == [args.slot]
    key_file = flags_config(args).crypto.key_file
    if last and not key_file:
        _confirm(args, "This is the last keyslot. Device will become unusable after purging "
                       "this key.")
    if not args.batch_mode or key_file or not sys.stdin.isatty():
        _verify_other(args, loaded, args.slot, last, key_file)
    _remove(args, loaded, args.slot)
    return 0


def _verify_other(args, loaded, slot: int, last: bool, key_file: str) -> None:
    """cryptsetup's check before killing a slot: a passphrase of another slot (of this one,
    if it is the last).  Piped input that is empty skips the check, as in cryptsetup."""
    try:
        key, used = _unlock(args, loaded, "Enter any remaining passphrase: ",
                            slot if last else None)
    except NoPassphrase:
        if key_file in ("", "-"):
            return
        raise
    key.wipe()
    if used == slot and not last:       # cryptsetup tries only the other slots
        raise WrongPassphrase("No key available with this passphrase.")


def _remove(args, loaded, slot: int) -> None:
    from cryptfs.formats import keyslots
    with keyslots.editing(loaded, listing.holder) as f:
        keyslots.slots_of(loaded).remove(f, slot)
    _say(args, f"Key slot {slot} removed.", "Command successful.")


def cmd_header_backup(args) -> int:
    from cryptfs.formats import headers
    headers.backup(_path(args), args.header_backup_file)
    _say(args, "Command successful.")
    return 0


def cmd_header_restore(args) -> int:
    from cryptfs.formats import headers
    path = _path(args)
    _refuse_if_open(path)
    headers.restore(path, args.header_backup_file, lambda w: _confirm(args, w),
                    listing.holder)
    _say(args, "Command successful.")
    return 0


def cmd_uuid(args) -> int:
    from cryptfs.formats import headers, keyslots
    if args.uuid is None:
        print(keyslots.load(_path(args), args.type).header.uuid)
        return 0
    loaded = _load(args, key_slots=False)
    if args.uuid != loaded.header.uuid:
        if sys.stdin.isatty() and not args.batch_mode:
            confirm("Do you really want to change UUID of device?")
        headers.set_uuid(loaded, args.uuid, listing.holder)
    _say(args, "Command successful.")
    return 0


def cmd_is_luks(args) -> int:
    from cryptfs.formats import keyslots
    path = _path(args)
    try:
        keyslots.load(path, args.type)
    except FormatError:
        _say(args, f"Device {path} is not a valid LUKS device.")
        return 1
    _say(args, "Command successful.")
    return 0


def cmd_config(args) -> int:
    from cryptfs.formats import headers
    if args.label is None and args.subsystem is None and args.priority is None:
        raise CryptfsError("Option --priority, --label or --subsystem is missing.")
    args.type = "luks2"
    loaded = _load(args, key_slots=False)
    if args.priority is not None:
        if args.key_slot is None:
            raise CryptfsError("--priority needs --key-slot")
        headers.set_priority(loaded, args.key_slot, args.priority, listing.holder)
        loaded = _load(args, key_slots=False)
    if args.label is not None or args.subsystem is not None:
        headers.set_labels(loaded, args.label, args.subsystem, listing.holder)
    _say(args, "Command successful.")
    return 0
