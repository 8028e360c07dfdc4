"""The Python API: an encrypted image as a file object, without FUSE, root or a daemon.

``open_image`` assembles the same stack the FUSE daemon serves (:func:`cryptfs.stack.assemble`:
format → volume key → backend → converter → device) and hands back its synchronous device as
an :class:`io.RawIOBase`.  ``format_image`` is ``cryptfs format``; ``read_header`` is what
``cryptfs dump`` shows.  Every failure is a :class:`cryptfs.errors.CryptfsError` with the
message the CLI prints.
"""

import io
import os
import threading
from typing import Any

from cryptfs.core.config import SECTIONS, Config
from cryptfs.core.volume import KeySource
from cryptfs.crypto.keys import Secret, read_key_file
from cryptfs.errors import BusyError, ConfigError, KeyMaterialError
from cryptfs.formats import luks
from cryptfs.formats.create import format_image as _format
from cryptfs.formats.luks1 import Luks1Header
from cryptfs.formats.luks2.header import Luks2Header
from cryptfs.formats.params import FormatOptions
from cryptfs.stack import Stack, assemble

#: plain-mode options ``open_image`` takes as keyword arguments (config keys, cryptsetup's
#: meanings): cipher, key_size, hash, sector_size, iv_large_sectors, offset, skip
PLAIN_OPTIONS = {key for section, key in luks.PLAIN_ONLY}


#: the piece a large read or write is converted in (see EncryptedImage._pieces)
CHUNK = 4 << 20


class EncryptedImage(io.RawIOBase):
    """The decrypted device of an open image: byte-addressed like ``MOUNTPOINT/device``.

    Reads and writes at any offset and length (read-modify-write at the edges of the data
    units); reads past the end return ``b""``, a write past the end is cut short and one that
    starts there fails (DeviceError, ENOSPC).  Safe to share between threads: each call moves
    the position atomically and overlapping writes never interleave within a data unit, as on
    the FUSE device.  ``close()`` flushes, releases the image's locks and wipes the key.
    """

    def __init__(self, stack: Stack):
        super().__init__()
        self._stack = stack
        self._device = stack.device
        self._position = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """The device's size in bytes."""
        return self._device.size

    def __len__(self) -> int:
        return self._device.size

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self._device.read_only

    def seekable(self) -> bool:
        return True

    def _advance(self, length: int) -> int:
        """Claim ``length`` bytes from the position (cut at the end); where they start."""
        with self._lock:
            start = self._position
            self._position += max(0, min(length, self.size - start))
            return start

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` from the position; the number of bytes read (0 at the end)."""
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        return self._read_into(view, self._advance(len(view)))

    def write(self, data) -> int:
        """Write ``data`` at the position; the number of bytes written (short at the end)."""
        self._checkClosed()
        view = memoryview(data).cast("B")
        return self._write_from(view, self._advance(len(view)))

    def pread(self, length: int, offset: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end), leaving the position alone: for
        threads sharing the object, as :func:`os.pread`."""
        self._checkClosed()
        buffer = bytearray(max(0, min(length, self.size - offset)))
        del buffer[self._read_into(memoryview(buffer), offset):]
        return bytes(buffer)

    def pwrite(self, data, offset: int) -> int:
        """Write ``data`` at ``offset``, leaving the position alone, as :func:`os.pwrite`;
        the number of bytes written (short at the end)."""
        self._checkClosed()
        return self._write_from(memoryview(data).cast("B"), offset)

    # Large requests go in pieces of CHUNK bytes, on CHUNK boundaries of the device, so the
    # memory a request needs beyond its own buffer stays that of one piece (a 1 GiB read
    # held three copies of it at once before).

    def _pieces(self, offset: int, length: int):
        """(offset, start, end): the pieces of [offset, offset + length), relative starts."""
        done = 0
        while done < length:
            at = offset + done
            n = min(length - done, CHUNK - at % CHUNK)
            yield at, done, done + n
            done += n

    def _read_into(self, view: memoryview, offset: int) -> int:
        got = 0
        for at, start, end in self._pieces(offset, len(view)):
            data = self._device.read(at, end - start)
            view[start:start + len(data)] = data
            got += len(data)
            if len(data) < end - start:
                break
        return got

    def _write_from(self, view: memoryview, offset: int) -> int:
        written = 0
        for at, start, end in self._pieces(offset, len(view)):
            n = self._device.write(at, view[start:end])
            written += n
            if n < end - start:
                break
        return written

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()
        with self._lock:
            base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self.size}
            if whence not in base:
                raise ValueError(f"invalid whence {whence}")
            position = base[whence] + offset
            if position < 0:
                raise ValueError(f"negative seek position {position}")
            self._position = position
            return position

    def tell(self) -> int:
        self._checkClosed()
        return self._position

    def flush(self) -> None:
        """Make every write so far durable in the image (fsync)."""
        if not self.closed:
            self._device.flush()

    def close(self) -> None:
        """Flush, close the image (releasing its locks) and wipe the volume key."""
        if self.closed:
            return
        try:
            super().close()         # flushes first, then marks the file closed
        finally:
            self._stack.close()


def open_image(path: str | os.PathLike, *, passphrase: str | bytes | None = None,
               key_file: str | os.PathLike | None = None, header: str | os.PathLike | None = None,
               key_slot: int | None = None, read_only: bool = True, type: str | None = None,
               backend: str | None = None, **plain_options: Any) -> EncryptedImage:
    """Open an encrypted image as a file object of its plaintext.

    ``type``: ``luks`` (default: LUKS1 or LUKS2 from the header), ``luks1``, ``luks2`` or
    ``plain``.  Key material is ``passphrase`` (LUKS: a key slot's passphrase; plain: hashed
    with ``hash``) or ``key_file`` (LUKS: the passphrase is the file's contents; plain: the raw
    key), exactly one of them.  ``header``: a detached LUKS header; ``key_slot``: try only that
    slot.  ``backend``: ``multidu`` (default) or ``software``.  Plain mode takes cryptsetup's
    options as keywords: cipher, key_size, hash, sector_size, iv_large_sectors, offset, skip.
    Read-only unless ``read_only=False``; the image is locked as ``cryptfs open`` locks it.
    Raises CryptfsError (ConfigError, KeyMaterialError, ImageError, BusyError...).
    """
    if (passphrase is None) == (key_file is None):
        raise KeyMaterialError("give exactly one of passphrase and key_file")
    config = Config()
    unknown = set(plain_options) - PLAIN_OPTIONS
    if unknown:
        raise ConfigError(f"unknown option {sorted(unknown)[0]} (plain mode takes: "
                          f"{', '.join(sorted(PLAIN_OPTIONS))})")
    given = {("device", "type"): type, ("device", "header"): header and os.fspath(header),
             ("device", "key_slot"): key_slot, ("device", "read_only"): read_only,
             ("backend", "name"): backend, ("crypto", "key_file"): key_file and
             os.fspath(key_file),
             **{(_section(key), key): value for key, value in plain_options.items()}}
    for (section, key), value in given.items():
        if value is not None:
            config.set(section, key, value, origin=key)
    if config.backend.name == "engine":
        raise ConfigError("backend engine is asynchronous: it serves only the FUSE device "
                          "(cryptfs open)")
    keys = KeySource(config.crypto.key_file,
                     given=None if passphrase is None else _passphrase(passphrase))
    try:
        return EncryptedImage(assemble(os.fspath(path), config, keys))
    finally:
        keys.wipe()


def _passphrase(value) -> Secret:
    """A passphrase given by a program: str (UTF-8), bytes, bytearray or memoryview; TypeError
    for anything else (an int would otherwise become that many zero bytes)."""
    if isinstance(value, str):
        return Secret(value.encode())
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Secret(value)
    raise TypeError(f"passphrase must be str, bytes, bytearray or memoryview, not "
                    f"{type(value).__name__}")


def _section(key: str) -> str:
    return next(section for section, cls in SECTIONS.items() if key in cls.__dataclass_fields__)


#: format_image's keywords (cryptfs format's options) → FormatOptions fields
_FORMAT_OPTIONS = {"type": "version", "cipher": "cipher", "key_size": "key_bits",
                   "sector_size": "sector_size", "hash": "hash", "pbkdf": "pbkdf",
                   "iter_time": "iter_time", "pbkdf_force_iterations": "force_iterations",
                   "pbkdf_memory": "memory", "pbkdf_parallel": "parallel", "size": "size",
                   "header": "header"}


def format_image(path: str | os.PathLike, *, passphrase: str | bytes | None = None,
                 key_file: str | os.PathLike | None = None, overwrite: bool = False,
                 **options: Any) -> str:
    """Write a new LUKS header and key slot 0 on ``path``, as ``cryptfs format`` does (the
    data area is left as it is); returns the new UUID.

    Options are ``cryptfs format``'s, with its defaults: type (``luks2`` or ``luks1``),
    cipher, key_size, sector_size, hash, pbkdf, iter_time, pbkdf_force_iterations,
    pbkdf_memory, pbkdf_parallel, size (create the image with this many bytes), header (a
    detached header file; the image is not touched).  An existing image's header is only
    overwritten with ``overwrite=True`` (BusyError otherwise).  Raises CryptfsError.
    """
    unknown = set(options) - set(_FORMAT_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown option {sorted(unknown)[0]} (format takes: "
                          f"{', '.join(_FORMAT_OPTIONS)})")
    if (passphrase is None) == (key_file is None):
        raise KeyMaterialError("give exactly one of passphrase and key_file")
    fields = {_FORMAT_OPTIONS[k]: os.fspath(v) if k == "header" else v
              for k, v in options.items() if v is not None}
    format_options = FormatOptions(**fields)
    if os.path.exists(path) and not format_options.header and not overwrite:
        raise BusyError(f"This overwrites the header area of {os.fspath(path)}; its data "
                        "becomes unreadable.  Pass overwrite=True to confirm.")
    secret = read_key_file(os.fspath(key_file)) if passphrase is None else \
        _passphrase(passphrase)
    with secret:
        return _format(os.fspath(path), format_options, secret)


def read_header(path: str | os.PathLike, header: str | os.PathLike | None = None) \
        -> Luks1Header | Luks2Header:
    """The LUKS header of ``path`` (or of the detached ``header`` file), parsed and checked:
    what ``cryptfs dump`` shows.  FormatError if there is no valid LUKS header."""
    with luks.HeaderFile(os.fspath(header or path)) as hdr:
        return luks.read_header(hdr)[1]
