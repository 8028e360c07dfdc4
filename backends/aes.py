"""AES over one data unit with the ``cryptography`` package: the per-unit cipher.

``UnitCipher(mode, key).crypt(op, iv, src, dst)`` encrypts or decrypts exactly one data unit
(XTS: the IV is the tweak; CBC: the IV starts the chain).  ``src`` and ``dst`` may be the same
buffer.  The AES key schedule object is built once; each unit costs one cipher context, which is
exactly the per-request overhead dm-crypt pays per sector.
"""

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .base import CryptoFailure, Op


class UnitCipher:
    def __init__(self, mode: str, key: bytes | bytearray):
        try:
            self._alg = algorithms.AES(key)   # keeps a reference: wiping key wipes it
            if mode == "xts":
                Cipher(self._alg, modes.XTS(bytes(16))).encryptor()   # refuses equal key halves
        except ValueError as e:
            raise CryptoFailure(f"AES-{mode.upper()} refuses this key: {e}") from None
        self._xts = mode == "xts"

    def crypt(self, op: Op, iv: bytes, src: memoryview, dst: memoryview) -> None:
        mode = modes.XTS(iv) if self._xts else modes.CBC(iv)
        cipher = Cipher(self._alg, mode)
        ctx = cipher.encryptor() if op is Op.ENCRYPT else cipher.decryptor()
        if self._xts:
            ctx.update_into(src, dst)
        else:
            # CBC's update_into wants len(src) + 15 bytes of room; a data unit view has none.
            dst[:] = ctx.update(src)
