"""Key slots: add a passphrase, change one, remove one — LUKS1 and LUKS2, written as
cryptsetup writes them and in an order that an interruption (SIGKILL, power loss) at any point
leaves an image that opens with the old passphrases or with the new ones.

* add: the new slot's key material goes to an area no slot uses, then the header refers to it;
* change: the new material goes to a free area first; then the header swaps it in (LUKS2: one
  update of the same slot id; LUKS1: the free slot is enabled, then the old one disabled —
  two writes, so a torn sector never loses both); then the old material is wiped;
* remove: the header forgets the slot, then its material is wiped.

Where cryptsetup would overwrite a slot's only copy in place (every LUKS1 slot or every LUKS2
area in use), cryptfs refuses instead.  A LUKS1 change with ``-S N`` keeps slot N, as
cryptsetup does, by moving the new material through a free slot.  How each version does it is
the header's (:meth:`~.protocol.LuksHeader.add_slot` and friends).

The header is read and the passphrase checked under cryptsetup's shared lock (:func:`load`);
changes happen under its exclusive lock, after checking the header did not change meanwhile
(:func:`editing`).
"""

import contextlib
from dataclasses import dataclass

from cryptfs.crypto.keys import Secret
from cryptfs.errors import BusyError
from cryptfs.formats import luks
from cryptfs.formats.kdf import Kdf
from cryptfs.formats.lock import Holder, MetadataLock
from cryptfs.formats.metadata import WritableHeader
from cryptfs.formats.protocol import LuksHeader


@dataclass
class Loaded:
    """A header as read under the shared lock; ``raw`` is its metadata, to notice changes."""
    path: str
    header: LuksHeader
    raw: bytes

    @property
    def module(self) -> type[LuksHeader]:
        """The header's class, whose methods take the header first
        (``loaded.module.check_supported(loaded.header)``)."""
        return type(self.header)

    @property
    def version(self) -> str:
        return self.header.KIND

    def slots(self) -> list[int]:
        """Active key slot numbers."""
        return self.header.active_slots()


def load(path: str, wanted: str = "luks") -> Loaded:
    """Read the header under cryptsetup's shared lock."""
    with MetadataLock(path, exclusive=False), luks.HeaderFile(path) as hdr:
        header = luks.read(hdr, wanted)
        return Loaded(path, header, hdr.read_at(0, header.metadata_size))


def unlock(loaded: Loaded, passphrase: Secret, slot: int | None = None) -> tuple[Secret, int]:
    """(volume key, slot) for ``passphrase``; KeyMaterialError if it opens no slot."""
    with MetadataLock(loaded.path, exclusive=False), luks.HeaderFile(loaded.path) as hdr:
        return loaded.header.unlock(hdr.read_at, passphrase, slot)


@contextlib.contextmanager
def editing(loaded: Loaded, holder: Holder | None = None):
    """The header file open for writing under cryptsetup's exclusive lock; BusyError if an
    open cryptfs device holds it or the header changed since ``loaded`` was read."""
    with MetadataLock(loaded.path, exclusive=True, holder=holder), WritableHeader(loaded.path) as f:
        if f.read_at(0, len(loaded.raw)) != loaded.raw:
            raise BusyError(f"the header of {loaded.path} changed while this command ran "
                            "(another cryptsetup or cryptfs?); nothing was written, try again")
        yield f


def slots_of(loaded: Loaded) -> "Slots":
    return Slots(loaded)


class Slots:
    """Key slot changes on one loaded header, which follows each change."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded

    def check_new(self, slot: int | None) -> int:
        """The slot a new passphrase goes to (``slot``, or the first free one); CryptfsError
        if it is taken or out of range, or none is free."""
        return self.loaded.header.check_new_slot(slot)

    def check_active(self, slot: int) -> None:
        self.loaded.header.check_active_slot(slot)

    def add(self, f: WritableHeader, slot: int, key: Secret, passphrase: Secret, kdf: Kdf,
            unlocked: int, af_hash: str) -> None:
        """``passphrase`` opens ``key`` from ``slot`` (``unlocked`` opened it)."""
        self.loaded.header = self.loaded.header.add_slot(f, slot, key, passphrase, kdf,
                                                         unlocked, af_hash)

    def change(self, f: WritableHeader, old: int, key: Secret, passphrase: Secret, kdf: Kdf,
               af_hash: str, keep_slot: bool) -> int:
        """``old``'s key opens with ``passphrase`` instead; the slot it ends in."""
        self.loaded.header, slot = self.loaded.header.change_slot(f, old, key, passphrase, kdf,
                                                                  af_hash, keep_slot)
        return slot

    def remove(self, f: WritableHeader, slot: int) -> None:
        self.loaded.header = self.loaded.header.kill_slot(f, slot)
