"""What a LUKS header offers, whichever version: callers ask the header (``header.segment``,
``header.unlock(...)``, ``header.write(f)``) instead of branching on LUKS1 or LUKS2.

:class:`LuksHeader` is the base of :class:`~cryptfs.formats.luks1.Luks1Header` and
:class:`~cryptfs.formats.luks2.header.Luks2Header`.  Besides the methods below, each has:

* ``uuid``; ``cipher_name``, ``cipher_mode`` and ``payload_offset`` (512-byte sectors) as
  ``cryptsetup luksDump`` shows them; ``segment``, the data segment (a :class:`Segment`, None
  where LUKS2 segment 0 is no crypt segment);
* ``metadata_size``: the bytes at the start of the file that hold the header (compared before
  a change, to notice another writer); ``areas_size``: through the end of the key slot areas
  (what a backup holds and the file must hold); ``layout``: what a restored backup must share
  with the header it replaces;
* ``damaged`` (which LUKS2 copy is invalid, or None) and ``warnings``.

Headers are values: a change returns the header as now written.  Every writing method takes
the header file open for writing (``write(offset, data)``, ``read_at``, ``wipe``) under
cryptsetup's exclusive lock, and writes in an order an interruption cannot hurt (each format
says how).
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

from cryptfs.core.geometry import check_sector_size
from cryptfs.crypto.keys import Secret
from cryptfs.errors import CryptfsError
from cryptfs.formats.kdf import Kdf

ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Segment:
    offset: int               # bytes into the data device
    size: int | None          # bytes, None = "dynamic" (to the end of the device)
    iv_tweak: int             # 512-byte sectors added to IV sectors
    encryption: str
    sector_size: int


class LuksHeader(ABC):
    KIND: str                 # "luks1" or "luks2"
    VERSION: int              # the on-disk version field
    MAX_SLOTS: int
    KDF_KINDS: tuple[str, ...]
    DEFAULT_KDF: str
    OFFSET_FIELD: str         # what the data offset is called, for messages
    damaged: str | None = None
    warnings: tuple[str, ...] = ()

    # --- making and reading ------------------------------------------------------------

    @classmethod
    @abstractmethod
    def read(cls, read_at: ReadAt) -> "LuksHeader":
        """The header, validated as cryptsetup validates it; FormatError otherwise."""

    @classmethod
    @abstractmethod
    def create(cls, key: Secret, cipher: str, sector_size: int, passphrase: Secret, kdf: Kdf,
               digest_iterations: int, hash_name: str,
               detached: bool) -> tuple["LuksHeader", dict[int, bytes]]:
        """A new header with ``key`` in slot 0, as cryptsetup's defaults lay it out:
        (header, {byte offset: bytes to write})."""

    @classmethod
    @abstractmethod
    def default_data_offset(cls, key_bytes: int) -> int:
        """Bytes before the data in a new image with the header embedded."""

    @classmethod
    def check_sector_size(cls, sector_size: int) -> None:
        """CryptfsError unless a new header can have this sector size."""
        check_sector_size(sector_size)

    @abstractmethod
    def check_supported(self) -> None:
        """FormatError or SpecError for a valid header cryptfs cannot open."""

    @abstractmethod
    def dump(self, path: str) -> str:
        """What ``cryptsetup luksDump PATH`` prints."""

    def volume_key_dump(self, path: str, key: Secret) -> str:
        """What ``cryptsetup luksDump --dump-volume-key`` prints: the cipher, the data offset,
        the UUID and the key, 16 bytes a line."""
        # the key as text, as asked: the strings (like what is printed) cannot be wiped
        key_hex = [f"{b:02x} " for b in key.buffer]
        rows = ["".join(key_hex[i:i + 16]) for i in range(0, len(key_hex), 16)]
        return (f"LUKS header information for {path}\n"
                f"Cipher name:   \t{self.cipher_name}\n"
                f"Cipher mode:   \t{self.cipher_mode}\n"
                f"Payload offset:\t{self.payload_offset}\n"
                f"UUID:          \t{self.uuid}\n"
                f"MK bits:       \t{len(key) * 8}\n"
                "MK dump:\t" + "\n\t\t".join(rows) + "\n")

    # --- key slots ---------------------------------------------------------------------

    @abstractmethod
    def unlock(self, read_at: ReadAt, passphrase: Secret,
               slot: int | None = None) -> tuple[Secret, int]:
        """(volume key, the slot that opened it); KeyMaterialError if none does."""

    @abstractmethod
    def active_slots(self) -> list[int]:
        """Active key slot numbers, ascending."""

    def free_slots(self) -> list[int]:
        active = set(self.active_slots())
        return [i for i in range(self.MAX_SLOTS) if i not in active]

    def check_new_slot(self, slot: int | None) -> int:
        """The slot a new passphrase goes to (``slot``, or the first free one); CryptfsError
        if it is taken or out of range, or none is free."""
        free = self.free_slots()
        if slot is None:
            if not free:
                raise CryptfsError(f"all {self.MAX_SLOTS} key slots are in use; remove one "
                                   "first (luksKillSlot)")
            return free[0]
        if not 0 <= slot < self.MAX_SLOTS:
            raise CryptfsError(f"key slot {slot} is invalid, please select between 0 and "
                               f"{self.MAX_SLOTS - 1}")
        if slot not in free:
            raise CryptfsError(f"Key slot {slot} is full, please select another one.")
        return slot

    def check_active_slot(self, slot: int) -> None:
        if slot not in self.active_slots():
            raise CryptfsError(f"Keyslot {slot} is not active.")

    @abstractmethod
    def add_slot(self, f, slot: int, key: Secret, passphrase: Secret, kdf: Kdf, unlocked: int,
                 af_hash: str) -> "LuksHeader":
        """``passphrase`` opens ``key`` from ``slot`` too (``unlocked``: the slot that opened
        ``key``; ``af_hash``: the splitter's hash where the format lets it be chosen).  The
        material goes to an unused area before the header names it."""

    @abstractmethod
    def change_slot(self, f, slot: int, key: Secret, passphrase: Secret, kdf: Kdf,
                    af_hash: str, keep_slot: bool) -> tuple["LuksHeader", int]:
        """``slot``'s key opens with ``passphrase`` instead: (header, the slot it is in now —
        ``slot`` where the format keeps it, or with ``keep_slot``)."""

    @abstractmethod
    def kill_slot(self, f, slot: int) -> "LuksHeader":
        """Forget ``slot``, then overwrite its material with random bytes."""

    # --- the whole header --------------------------------------------------------------

    @abstractmethod
    def write(self, f, **changes) -> "LuksHeader":
        """Write this header with ``changes`` (fields: ``uuid``; LUKS2 also ``label``,
        ``subsystem``, ``metadata``) as the next version; returns it as written."""

    def backup_blanks(self) -> list[tuple[int, int]]:
        """[start, end) ranges a header backup leaves zero, as cryptsetup's does."""
        return []
