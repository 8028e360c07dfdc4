"""Whole-header tasks, as cryptsetup does them: back up and restore the header with its key
slot areas (luksHeaderBackup / luksHeaderRestore), set the UUID (luksUUID --uuid), the LUKS2
label and subsystem, and a LUKS2 key slot's priority (config)."""

import copy
import os
import uuid as uuidlib
from typing import Callable

from cryptfs.errors import ConfigError, CryptfsError, FormatError, ImageError
from cryptfs.formats import luks
from cryptfs.formats.keyslots import Loaded, editing, load
from cryptfs.formats.lock import Holder, MetadataLock
from cryptfs.formats.metadata import write_at
from cryptfs.formats.params import PRIORITIES

PAGE = 4096
LABEL_MAX = 47                      # bytes, as the 48-byte fields end with NUL


def backup(path: str, backup_file: str) -> None:
    """Write ``backup_file`` (mode 0400, never over an existing file) under the shared lock:
    the header's ``areas_size`` bytes (LUKS1 up to the end of the last key slot's material,
    LUKS2 both header copies and the key slot area), padded to 4 KiB."""
    header = load(path).header
    size = header.areas_size
    with MetadataLock(path, exclusive=False), luks.HeaderFile(path) as hdr:
        data = bytearray(hdr.read_at(0, size))
    if len(data) < size:
        raise FormatError(f"{path} ends before its key slot areas ({len(data)} of {size} bytes)")
    for start, end in header.backup_blanks():
        data[start:end] = bytes(end - start)
    data += bytes(-len(data) % PAGE)
    try:
        fd = os.open(backup_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o400)
    except FileExistsError:
        raise CryptfsError(f"Requested header backup file {backup_file} already exists.") \
            from None
    except OSError as e:
        raise ImageError(f"cannot create header backup file {backup_file}: {e.strerror}") \
            from None
    try:
        write_at(fd, data, 0)
    finally:
        os.close(fd)


def restore(path: str, backup_file: str, confirm: Callable[[str], None],
            holder: Holder | None = None) -> None:
    """Write the backup's header and key slot areas over ``path``'s, after ``confirm`` (which
    raises to refuse); ConfigError if the backup is no LUKS header or does not fit."""
    try:
        saved = load(backup_file)
    except ImageError as e:
        raise ConfigError(f"Backup file {backup_file} does not contain a valid LUKS header "
                          f"({e})") from None
    size = saved.header.areas_size
    with luks.HeaderFile(backup_file) as hdr:
        data = hdr.read_at(0, size)
    try:
        current = load(path, saved.version)
    except FormatError:
        current = None
    if current and current.header.layout != saved.header.layout:
        raise ConfigError(f"data offset, key size or header size differ on {path} and in the "
                          "backup; restore refused")
    if current:
        warning = f"Device {path} already contains a LUKS header. Replacing header will " \
                  "destroy existing keyslots."
        if current.header.uuid != saved.header.uuid:
            warning += " WARNING: real device header has different UUID than backup!"
    else:
        warning = f"Device {path} does not contain a {saved.version.upper()} header. " \
                  "Replacing header can destroy data on that device."
    confirm(warning)
    with MetadataLock(path, exclusive=True, holder=holder):
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            write_at(fd, data, 0)
        finally:
            os.close(fd)


def set_uuid(loaded: Loaded, new: str | None, holder: Holder | None = None) -> str:
    """Set the UUID (None: a new random one); returns it, in canonical form."""
    try:
        value = str(uuidlib.UUID(new)) if new else str(uuidlib.uuid4())
    except ValueError:
        raise ConfigError(f"'{new}' is not a UUID (wrong LUKS UUID format provided)") from None
    with editing(loaded, holder) as f:
        loaded.header = loaded.header.write(f, uuid=value)
    return value


def set_labels(loaded: Loaded, label: str | None, subsystem: str | None,
               holder: Holder | None = None) -> None:
    """LUKS2 label and/or subsystem (None: unchanged, "": cleared)."""
    for name, value in (("label", label), ("subsystem", subsystem)):
        if value is not None and (len(value.encode()) > LABEL_MAX or not value.isascii()):
            raise ConfigError(f"--{name} must be at most {LABEL_MAX} ASCII characters")
    changes = {name: value for name, value in (("label", label), ("subsystem", subsystem))
               if value is not None}
    with editing(loaded, holder) as f:
        loaded.header = loaded.header.write(f, **changes)


def set_priority(loaded: Loaded, slot: int, priority: str,
                 holder: Holder | None = None) -> None:
    """A LUKS2 key slot's priority: ignore, normal (the default, not stored) or prefer."""
    meta = copy.deepcopy(loaded.header.metadata)
    keyslot = meta["keyslots"].get(str(slot))
    if keyslot is None:
        raise CryptfsError(f"Keyslot {slot} is not active.")
    keyslot.pop("priority", None)
    if priority != "normal":
        keyslot["priority"] = PRIORITIES[priority]
    with editing(loaded, holder) as f:
        loaded.header = loaded.header.write(f, metadata=meta)
