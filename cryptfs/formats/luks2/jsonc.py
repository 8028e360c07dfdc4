"""The LUKS2 JSON area as cryptsetup reads it: parsed by json-c, the library cryptsetup itself
parses it with (through ctypes), so cryptfs accepts exactly the JSON text cryptsetup accepts —
json-c's lenient syntax (comments, single quotes, trailing commas), its 32 levels of nesting, its
64-bit integers.  Values come back as plain Python: dict (json-c's key order; keys end at a NUL
as C strings do), list, str (ends at a NUL likewise), int, bool, None and :class:`Double`.

The getters at the end are json-c's (``json_object_get_string`` and friends) for the places where
cryptsetup prints a value whose type it never checked.
"""

import ctypes
import ctypes.util
import functools
import json

from cryptfs.errors import FormatError

INT64_MAX = (1 << 63) - 1
_PLAIN, _NOSLASHESCAPE = 0, 16            # json-c's JSON_C_TO_STRING_* flags
_NULL, _BOOLEAN, _DOUBLE, _INT, _OBJECT, _ARRAY, _STRING = range(7)


class Double(float):
    """A JSON number json-c read as a double; ``text`` is how json-c prints it."""

    text: str


class _Iterator(ctypes.Structure):
    _fields_ = [("opaque", ctypes.c_void_p)]


@functools.cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("json-c") or "libjson-c.so.5"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise FormatError("reading LUKS2 headers needs json-c, the library cryptsetup uses "
                          "(libjson-c.so.5; Debian package libjson-c5)") from None
    ptr, size, it = ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(_Iterator)
    for fn, restype, argtypes in (
            ("json_tokener_new", ptr, []),
            ("json_tokener_free", None, [ptr]),
            ("json_tokener_parse_ex", ptr, [ptr, ctypes.c_char_p, ctypes.c_int]),
            ("json_tokener_get_error", ctypes.c_int, [ptr]),
            ("json_tokener_error_desc", ctypes.c_char_p, [ctypes.c_int]),
            ("json_tokener_get_parse_end", size, [ptr]),
            ("json_object_put", ctypes.c_int, [ptr]),
            ("json_object_get_type", ctypes.c_int, [ptr]),
            ("json_object_get_boolean", ctypes.c_int, [ptr]),
            ("json_object_get_double", ctypes.c_double, [ptr]),
            ("json_object_get_int64", ctypes.c_int64, [ptr]),
            ("json_object_get_uint64", ctypes.c_uint64, [ptr]),
            ("json_object_get_string", ptr, [ptr]),
            ("json_object_get_string_len", ctypes.c_int, [ptr]),
            ("json_object_to_json_string_ext", ctypes.c_char_p, [ptr, ctypes.c_int]),
            ("json_object_array_length", size, [ptr]),
            ("json_object_array_get_idx", ptr, [ptr, size]),
            ("json_object_iter_begin", _Iterator, [ptr]),
            ("json_object_iter_end", _Iterator, [ptr]),
            ("json_object_iter_equal", ctypes.c_bool, [it, it]),
            ("json_object_iter_next", None, [it]),
            ("json_object_iter_peek_name", ctypes.c_char_p, [it]),
            ("json_object_iter_peek_value", ptr, [it])):
        getattr(lib, fn).restype = restype
        getattr(lib, fn).argtypes = argtypes
    return lib


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _value(lib: ctypes.CDLL, obj: int | None):
    kind = lib.json_object_get_type(obj)
    if kind == _NULL:
        return None
    if kind == _BOOLEAN:
        return bool(lib.json_object_get_boolean(obj))
    if kind == _INT:
        value = lib.json_object_get_int64(obj)
        return lib.json_object_get_uint64(obj) if value == INT64_MAX else value
    if kind == _DOUBLE:
        value = Double(lib.json_object_get_double(obj))
        value.text = ctypes.string_at(lib.json_object_get_string(obj)).decode()
        return value
    if kind == _STRING:
        return _string(lib, obj)
    if kind == _ARRAY:
        return [_value(lib, lib.json_object_array_get_idx(obj, i))
                for i in range(lib.json_object_array_length(obj))]
    out = {}
    it, end = lib.json_object_iter_begin(obj), lib.json_object_iter_end(obj)
    while not lib.json_object_iter_equal(ctypes.byref(it), ctypes.byref(end)):
        out[_cstr(lib.json_object_iter_peek_name(ctypes.byref(it)))] = _value(
            lib, lib.json_object_iter_peek_value(ctypes.byref(it)))
        lib.json_object_iter_next(ctypes.byref(it))
    return out


def _string(lib: ctypes.CDLL, obj: int) -> str:
    return _cstr(ctypes.string_at(lib.json_object_get_string(obj),
                                  max(lib.json_object_get_string_len(obj), 0)))


def parse_area(area: bytes) -> tuple[dict, int]:
    """(metadata, length of json-c's compact form of it) for a JSON area, checked as cryptsetup
    checks it: one JSON object from the first byte on, then only NUL bytes to the end.
    FormatError naming what is wrong otherwise."""
    lib = _lib()
    tok = lib.json_tokener_new()
    if not tok:
        raise MemoryError("json-c")
    try:
        obj = lib.json_tokener_parse_ex(tok, area, len(area))
        if not obj:
            desc = lib.json_tokener_error_desc(lib.json_tokener_get_error(tok)).decode()
            raise FormatError(f"the JSON area holds no valid JSON (json-c: {desc})")
        end = lib.json_tokener_get_parse_end(tok)
    finally:
        lib.json_tokener_free(tok)
    try:
        if area[:1] != b"{":
            raise FormatError("the JSON area does not start with '{'")
        if end >= len(area):
            raise FormatError("the JSON area has no NUL byte after the JSON")
        rest = area[end:].lstrip(b"\0")
        if rest:
            raise FormatError(f"the JSON area holds byte {rest[0]:#04x} after the JSON, at "
                              f"{len(area) - len(rest)} (only NUL bytes may follow)")
        if lib.json_object_get_type(obj) != _OBJECT:
            raise FormatError("the JSON area holds no JSON object")
        compact = lib.json_object_to_json_string_ext(obj, _PLAIN | _NOSLASHESCAPE)
        return _value(lib, obj), len(compact)
    finally:
        lib.json_object_put(obj)


# --- json-c's getters, for values of any type --------------------------------------------

def get_string(value) -> str | None:
    """``json_object_get_string``: None for null/missing (C's NULL), JSON text for containers."""
    if value is None or isinstance(value, str):
        return value
    return _text(value, spaced=True)


def get_int64(value) -> int:
    """``json_object_get_int64``: numbers clamped to int64, strings parsed, anything else 0."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Double):
        if value != value or value <= -2.0 ** 63:
            return -INT64_MAX - 1
        return INT64_MAX if value >= 2.0 ** 63 else int(value)
    if isinstance(value, int):
        return min(value, INT64_MAX)
    if isinstance(value, str):
        return _strtoll(value)
    return 0


def get_int(value) -> int:
    """``json_object_get_int``: :func:`get_int64` clamped to int32."""
    return max(-(1 << 31), min((1 << 31) - 1, get_int64(value)))


def _strtoll(text: str) -> int:
    digits = text.lstrip(" \t\n\v\f\r")
    sign = -1 if digits[:1] == "-" else 1
    digits = digits[1:] if digits[:1] in "+-" and digits else digits
    number = ""
    for c in digits:
        if not "0" <= c <= "9":
            break
        number += c
    if not number:
        return 0
    return max(-INT64_MAX - 1, min(INT64_MAX, sign * int(number)))


def on_disk(meta: dict) -> str:
    """The JSON area's text as cryptsetup writes it: json-c's ``JSON_C_TO_STRING_PLAIN |
    JSON_C_TO_STRING_NOSLASHESCAPE``."""
    return _text(meta, spaced=False, slash="/")


def _text(value, spaced: bool, slash: str = "\\/") -> str:
    """json-c's serialization (``JSON_C_TO_STRING_SPACED`` or plain; ``slash``: how "/" is
    written)."""
    colon, comma = (": ", ", ") if spaced else (":", ",")
    if isinstance(value, (dict, list)) and not value:
        return ("{ }" if spaced else "{}") if isinstance(value, dict) else \
            ("[ ]" if spaced else "[]")
    if isinstance(value, dict):
        inner = comma.join(f"{_quote(k, slash)}{colon}{_text(v, spaced, slash)}"
                           for k, v in value.items())
        return f"{{ {inner} }}" if spaced else f"{{{inner}}}"
    if isinstance(value, list):
        inner = comma.join(_text(v, spaced, slash) for v in value)
        return f"[ {inner} ]" if spaced else f"[{inner}]"
    if isinstance(value, str):
        return _quote(value, slash)
    if isinstance(value, Double):
        return value.text
    return json.dumps(value)


def _quote(text: str, slash: str = "\\/") -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "/": slash, "\b": "\\b", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\f": "\\f"}
    return '"' + "".join(escapes.get(c) or (f"\\u{ord(c):04x}" if c < " " else c)
                         for c in text) + '"'
