"""Asking the user: a new passphrase (twice at a terminal) and confirmation of what cannot be
undone."""

import argparse
import sys

from cryptfs.crypto.keys import Secret, read_key_file, read_passphrase
from cryptfs.errors import BusyError, CryptfsError, KeyMaterialError


def new_passphrase(key_file: str | None, prompt: str, offset: int = 0, size: int = 0) -> Secret:
    """A new passphrase: a key file's contents, or typed twice at a terminal (once from a
    pipe)."""
    if key_file:
        return read_key_file(key_file, offset, size)
    passphrase = read_passphrase(prompt)
    if sys.stdin.isatty():
        with read_passphrase("Verify passphrase: ") as again:
            if again.buffer != passphrase.buffer:
                passphrase.wipe()
                raise KeyMaterialError("Passphrases do not match.")
    return passphrase


def confirm(warning: str) -> None:
    """Ask at a terminal; elsewhere refuse, naming --batch-mode (cryptsetup assumes yes)."""
    if not sys.stdin.isatty():
        raise BusyError(f"{warning} Add --batch-mode to confirm.")
    answer = input(f"WARNING: {warning}\nAre you sure? (Type 'yes' in capital letters): ")
    if answer != "YES":
        raise CryptfsError("Operation aborted.")


def add_tries(parser: argparse.ArgumentParser) -> None:
    """cryptsetup's -T/--tries: how often a passphrase typed at a terminal may be tried."""
    parser.add_argument("-T", "--tries", type=int, default=3, metavar="N",
                        help="tries for a passphrase typed at a terminal (default 3)")
