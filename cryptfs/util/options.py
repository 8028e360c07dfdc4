"""Options declared once.

An option is a dataclass field made by :func:`option`: its type, default, check, one-line help
and, if it has one, its command-line flag.  The config sections (:mod:`cryptfs.core.config`) and the
options of ``format`` and the key slot commands (:mod:`cryptfs.formats.params`) are such
dataclasses; the argparse flags (:func:`add_flags`), the checks (:func:`checked`) and the
reference tables of docs/config.md (:func:`rows`) all come from them.
"""

import argparse
import json
from dataclasses import MISSING, Field, field, fields
from typing import Any, Callable, Iterator

from cryptfs.errors import ConfigError
from cryptfs.util.mdtable import markdown_table

Check = Callable[[Any], None]        # raises ValueError("what is allowed") on a bad value


def option(default, help: str, check: Check | None = None, *, flags: tuple[str, ...] = (),
           metavar: str | None = None, kind: type | None = None, parse: Callable | None = None,
           plain_only: bool = False):
    """A declared option.  ``flags``: its command-line spelling (none: config file only);
    ``parse``: how the flag's text becomes a value (default: the type); ``plain_only``: a LUKS
    header decides it, so giving it for a LUKS image is refused."""
    return field(default=default, metadata={
        "help": help + (" (plain mode)" if plain_only else ""), "check": check,
        "type": kind or type(default), "flags": flags, "metavar": metavar, "parse": parse,
        "plain_only": plain_only})


def choice(*allowed: str) -> Check:
    def check(value):
        if value not in allowed:
            raise ValueError(f"one of {', '.join(allowed)}")
    return check


def between(lo: float, hi: float) -> Check:
    def check(value):
        if not lo <= value <= hi:
            raise ValueError(f"between {lo} and {hi}")
    return check


def at_least(low: float) -> Check:
    def check(value):
        if value < low:
            raise ValueError(f"at least {low}")
    return check


#: a probability: between 0 and 1
probability = between(0, 1)


def parse_size(text: str) -> int:
    """Bytes from ``64M``, ``1G``, ``4096`` (K, M, G, T: powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in units:
            return int(text[:-1]) * units[text[-1]]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (e.g. 64M)") from None


def flag(f: Field) -> str | None:
    """The long spelling of a field's flag (``--key-file``), or None."""
    return f.metadata["flags"][-1] if f.metadata.get("flags") else None


def checked(label: str, value: Any, kind: type, check: Check | None) -> Any:
    """``value`` if it has type ``kind`` and passes ``check``; else ConfigError naming ``label``."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # bool is an int in Python; TOML keeps them apart and so do we.
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)) or \
            kind is not int and not isinstance(value, kind):
        raise ConfigError(f"config: {label} must be {type_name(kind)}, "
                          f"got {type_name(type(value), article=False)} {value!r}")
    if check:
        try:
            check(value)
        except ValueError as e:
            raise ConfigError(f"config: {label} must be {e}, got {value!r}") from None
    return value


_TYPE_NAMES = {bool: "boolean", int: "integer", str: "string", float: "number", dict: "table",
               list: "array"}


def type_name(kind: type, article: bool = True) -> str:
    name = _TYPE_NAMES.get(kind, kind.__name__)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}" if article else name


def add_flags(parser: argparse.ArgumentParser, cls, prefix: str = "",
              only: set[str] | None = None) -> None:
    """An argparse flag for each field of ``cls`` that has one (``only``: just these names).
    Flags default to None, so what was not given can be told apart; ``dest`` is ``prefix`` +
    the field name."""
    for f in fields(cls):
        if not f.metadata.get("flags") or (only is not None and f.name not in only):
            continue
        kind = f.metadata["type"]
        extra = {"action": "store_const", "const": True} if kind is bool else \
            {"type": f.metadata["parse"] or kind, "metavar": f.metadata["metavar"]}
        parser.add_argument(*f.metadata["flags"], dest=prefix + f.name, default=None,
                            help=f.metadata["help"] + _default_note(f), **extra)


def _default_note(f: Field) -> str:
    if f.metadata["type"] is bool or f.default in ("", MISSING):
        return ""
    return f" (default {f.default})"


def given(cls, args: argparse.Namespace, prefix: str = "") -> Iterator[tuple[Field, Any]]:
    """(field, value) for each flag of ``cls`` that was given on the command line."""
    for f in fields(cls):
        value = getattr(args, prefix + f.name, None) if f.metadata.get("flags") else None
        if value is not None:
            yield f, value


def from_args(cls, args: argparse.Namespace):
    """An instance of ``cls``: the defaults, with the given flags checked and applied."""
    values = {f.name: checked(flag(f), value, f.metadata["type"], f.metadata["check"])
              for f, value in given(cls, args)}
    return cls(**values)


def table(cls, skip=None) -> str:
    """The options of ``cls`` as a Markdown reference (docs/config.md's tables)."""
    return markdown_table(["flag", "type", "default", "meaning"], rows(cls, skip=skip))


def rows(cls, key: Callable[[Field], str] | None = None, skip=None) -> Iterator[list[str]]:
    """Reference table rows: [key,] flag, type, default, meaning (``skip``: not the fields of
    this base class)."""
    inherited = {f.name for f in fields(skip)} if skip else set()
    for f in fields(cls):
        if "help" not in f.metadata or f.name in inherited:
            continue
        flags = ", ".join(f"`{s}`" for s in f.metadata["flags"]) or ""
        cells = [flags, type_name(f.metadata["type"], article=False), f"`{json.dumps(f.default)}`",
                 f.metadata["help"]]
        yield ([key(f)] if key else []) + cells
