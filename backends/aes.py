"""One data unit with the ``cryptography`` package: the per-unit cipher.

``UnitCipher(chain, key).crypt(op, iv, src, dst)`` encrypts or decrypts exactly one data unit
(``xts``: AES-XTS, the IV is the tweak; ``cbc``: AES-CBC, the IV starts the chain; ``null``:
dm-crypt's cipher_null, output = input).  ``src`` and ``dst`` may be the same buffer.  The AES
key schedule object is built once; each unit costs one cipher context, which is exactly the
per-request overhead dm-crypt pays per sector.
"""

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cryptfs.backends.base import CryptoFailure, Op


class UnitCipher:
    def __init__(self, chain: str, key: bytes | bytearray):
        self._chain = chain
        if chain == "null":
            return
        try:
            self._alg = algorithms.AES(key)   # keeps a reference: wiping key wipes it
            if chain == "xts":
                Cipher(self._alg, modes.XTS(bytes(16))).encryptor()   # refuses equal key halves
        except ValueError as e:
            raise CryptoFailure(f"AES-{chain.upper()} refuses this key: {e}") from None

    def crypt(self, op: Op, iv: bytes, src: memoryview, dst: memoryview) -> None:
        if self._chain == "null":
            if dst is not src:
                dst[:] = src
            return
        xts = self._chain == "xts"
        cipher = Cipher(self._alg, modes.XTS(iv) if xts else modes.CBC(iv))
        ctx = cipher.encryptor() if op is Op.ENCRYPT else cipher.decryptor()
        if xts:
            ctx.update_into(src, dst)
        else:
            # CBC's update_into wants len(src) + 15 bytes of room; a data unit view has none.
            dst[:] = ctx.update(src)
