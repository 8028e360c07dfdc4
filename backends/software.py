"""``software``: one cipher call per data unit, synchronously — what dm-crypt does today.

Multi data unit requests are served by the generic auto-splitter (:func:`split_units`), so this
backend is correct for every mode but gains nothing from batching: it is the baseline.
"""

from dataclasses import dataclass

from cryptfs.backends.aes import UnitCipher
from cryptfs.backends.base import BackendStats, Caps, CryptoRequest, Status, split_units
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.spec import CipherSpec


@dataclass
class NoOptions:
    """software has no options of its own."""


class SoftwareBackend:
    name = "software"
    caps = Caps()
    Options = NoOptions

    def __init__(self, spec: CipherSpec, key: bytes | bytearray, options: NoOptions | None = None,
                 threads: int = 1):
        """``threads`` is ignored: one cipher call per data unit, on the caller's thread."""
        self._cipher = UnitCipher(spec.chain, key)
        self._byteorder = IV_MODES[spec.ivmode].byteorder
        self._stats = BackendStats()

    def submit(self, req: CryptoRequest) -> Status:
        self._stats.count(req)
        crypt = self._cipher.crypt
        for iv, src, dst in split_units(req, self._byteorder):
            crypt(req.op, iv, src, dst)
        return Status.DONE

    def statistics(self) -> dict:
        return self._stats.as_dict()

    def close(self) -> None:
        self._cipher = None   # the key bytes are the caller's; it wipes them
