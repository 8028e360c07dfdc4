"""FUSE ``fallocate`` for pyfuse3, which does not forward it (pyfuse3 3.x has no handler).

Discard on the device is ``fallocate(PUNCH_HOLE)``, so cryptfs needs this request.  No library
offers it, hence this module: after ``pyfuse3.init`` has created the FUSE session, it finds the
session's copy of libfuse's ``struct fuse_lowlevel_ops`` (by matching pyfuse3's own table, whose
address the extension's ELF symbol table gives) and fills the empty ``fallocate`` slot with a
ctypes callback.  The callback starts the async handler in a trio nursery, which answers with
``fuse_reply_err``.

Every assumption is checked before anything is written — the symbol table is present, the table
is found exactly once, and its neighbours of ``fallocate`` look as libfuse 3's public header
lays them out — otherwise :func:`install` returns False and discard stays unavailable (the
kernel then answers EOPNOTSUPP), which ``status`` reports.
"""

import ctypes
import errno
import logging
from typing import Awaitable, Callable

import pyfuse3
import trio

log = logging.getLogger(__name__)

# Slots of struct fuse_lowlevel_ops (fuse_lowlevel.h, libfuse 3, stable since 3.0): pointers in
# declaration order.  pyfuse3 sets forget_multi and readdirplus and leaves flock and fallocate.
_FORGET_MULTI, _FLOCK, _FALLOCATE, _READDIRPLUS = 38, 39, 40, 41
_SESSION_SYMBOL = "__pyx_v_7pyfuse3_session"
_OPS_SYMBOL = "__pyx_v_7pyfuse3_fuse_ops"
_INIT_SYMBOL = "PyInit_pyfuse3"
#: the ops table sits among the first fields of struct fuse_session
_SEARCH_WINDOW = 256

# void (*fallocate)(fuse_req_t, fuse_ino_t, int mode, off_t offset, off_t length, fuse_file_info*)
_FALLOCATE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_libfuse = ctypes.CDLL("libfuse3.so.3")
_libfuse.fuse_reply_err.argtypes = [ctypes.c_void_p, ctypes.c_int]
_libfuse.fuse_reply_err.restype = ctypes.c_int

Handler = Callable[[int, int, int, int], Awaitable[None]]   # (inode, mode, offset, length)
_installed: list = []     # keeps the ctypes callback alive as long as the session


def _symbols(path: str, names: list[str]) -> dict[str, tuple[int, int]] | None:
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        table = ELFFile(f).get_section_by_name(".symtab")
        if table is None:
            return None
        found = {}
        for name in names:
            symbols = table.get_symbol_by_name(name)
            if not symbols:
                return None
            found[name] = (symbols[0]["st_value"], symbols[0]["st_size"])
        return found


def _session_ops() -> ctypes.Array | None:
    """The live session's ops table as a ctypes pointer array, or None if it cannot be proven."""
    path = pyfuse3.__file__
    syms = _symbols(path, [_SESSION_SYMBOL, _OPS_SYMBOL, _INIT_SYMBOL])
    if syms is None:
        log.warning("pyfuse3 at %s has no symbol table", path)
        return None
    lib = ctypes.CDLL(path)
    base = ctypes.cast(getattr(lib, _INIT_SYMBOL), ctypes.c_void_p).value - syms[_INIT_SYMBOL][0]
    ops_addr, ops_size = base + syms[_OPS_SYMBOL][0], syms[_OPS_SYMBOL][1]
    if ops_size < (_READDIRPLUS + 1) * ctypes.sizeof(ctypes.c_void_p):
        return None
    template = ctypes.string_at(ops_addr, ops_size)
    session = ctypes.c_void_p.from_address(base + syms[_SESSION_SYMBOL][0]).value
    if not session:
        return None
    window = ctypes.string_at(session, _SEARCH_WINDOW + ops_size)
    at = window.find(template)
    if at < 0 or window.find(template, at + 1) >= 0:
        return None
    slots = (ctypes.c_void_p * (ops_size // ctypes.sizeof(ctypes.c_void_p))).from_address(
        session + at)
    if not (slots[_FORGET_MULTI] and slots[_READDIRPLUS]) or slots[_FLOCK] or slots[_FALLOCATE]:
        return None
    return slots


def install(nursery: trio.Nursery, handler: Handler) -> bool:
    """Route FUSE fallocate to ``handler`` for the current pyfuse3 session.

    Call after ``pyfuse3.init`` and before ``pyfuse3.main``.  ``handler`` raises
    ``pyfuse3.FUSEError`` to fail a request.  Returns False (and changes nothing) if the
    session's layout cannot be verified.
    """
    try:
        slots = _session_ops()
    except (OSError, ImportError, ValueError) as e:
        log.warning("cannot inspect pyfuse3 for fallocate: %s", e)
        slots = None
    if slots is None:
        log.warning("fallocate (discard) unavailable: pyfuse3's session layout not recognised")
        return False

    async def answer(req: int, inode: int, mode: int, offset: int, length: int) -> None:
        err = 0
        try:
            await handler(inode, mode, offset, length)
        except pyfuse3.FUSEError as e:
            err = e.errno
        except Exception:
            log.exception("fallocate failed")
            err = errno.EIO
        _libfuse.fuse_reply_err(req, err)

    def on_fallocate(req, inode, mode, offset, length, fi):
        # Runs inside pyfuse3's request loop on the trio thread: hand over, never raise.
        try:
            nursery.start_soon(answer, req, inode, mode, offset, length)
        except Exception:
            _libfuse.fuse_reply_err(req, errno.EIO)

    callback = _FALLOCATE_FN(on_fallocate)
    _installed.append(callback)
    slots[_FALLOCATE] = ctypes.cast(callback, ctypes.c_void_p).value
    return True
