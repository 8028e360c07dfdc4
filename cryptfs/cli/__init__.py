"""Layer 9: the ``cryptfs`` command."""

from cryptfs.cli.commands import main

__all__ = ["main"]
