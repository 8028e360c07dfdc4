"""Cipher specifications in dm-crypt's ``cipher-chainmode-ivmode[:ivopts]`` form.

``parse_spec("aes-cbc-essiv:sha256")`` → ``CipherSpec(cipher="aes", mode="cbc",
ivmode="essiv", ivopts="sha256")``.  Only what cryptfs can compute byte-exactly is accepted;
anything else raises :class:`SpecError` naming the part that is not supported.
"""

from dataclasses import dataclass

from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.errors import SpecError

#: chain mode → AES key sizes in bits dm-crypt accepts (an XTS key holds two AES keys).
KEY_SIZES = {
    "xts": (256, 512),
    "cbc": (128, 192, 256),
    "adiantum": (256,),
}
#: chain mode → key size used when none is given (cryptsetup's LUKS defaults).
DEFAULT_KEY_SIZE = {"xts": 512, "cbc": 256, "adiantum": 256}
#: Block ciphers other than AES (through libgcrypt, cryptfs/crypto/gcrypt.py and backends/core.c) →
#: their key sizes in bits (XTS: twice that); chain modes: those of KEY_SIZES but adiantum.
BLOCK_CIPHERS = {"serpent": (128, 192, 256), "twofish": (128, 256),
                 "camellia": (128, 192, 256)}
BLOCK_MODES = ("xts", "cbc")
#: Adiantum (``xchacha12,aes-adiantum-plain64``, ``xchacha20,...``): the cipher part names the
#: stream cipher and its round count → the chain the backends run (backends/adiantum.c).
ADIANTUM_CIPHERS = {"xchacha12,aes": "adiantum12", "xchacha20,aes": "adiantum20"}
#: The IV modes dm-crypt fills from the front of Adiantum's 32-byte IV (the rest zero), so
#: the 16-byte IV of the table zero-padded is the tweak; plain64be and benbi write the *end*
#: of the 32 bytes and ESSIV needs a block cipher: not accepted with Adiantum.
ADIANTUM_IV_MODES = ("plain64", "plain", "null")
#: dm-crypt's null cipher: ``cipher_null-ecb`` (output = input, no key, no IV) — for images
#: shipped unencrypted, and as the data plane's no-crypto ceiling.
NULL_CIPHER = "cipher_null"


@dataclass(frozen=True)
class CipherSpec:
    cipher: str
    mode: str
    ivmode: str
    ivopts: str | None = None

    def __str__(self) -> str:
        if self.is_null:
            return f"{NULL_CIPHER}-ecb"
        iv = f"{self.ivmode}:{self.ivopts}" if self.ivopts else self.ivmode
        return f"{self.cipher}-{self.mode}-{iv}"

    @property
    def is_null(self) -> bool:
        return self.cipher == NULL_CIPHER

    @property
    def chain(self) -> str:
        """What converts a data unit: ``xts``, ``cbc``, ``adiantum12``, ``adiantum20`` or
        ``null``."""
        if self.is_null:
            return "null"
        if self.mode == "adiantum":
            return ADIANTUM_CIPHERS[self.cipher]
        if self.cipher in BLOCK_CIPHERS:
            return f"{self.cipher}-{self.mode}"
        return self.mode

    @property
    def key_sizes(self) -> tuple[int, ...]:
        """The key sizes in bits this spec accepts."""
        if self.is_null:
            return (0,)
        if self.cipher in BLOCK_CIPHERS:
            return tuple(b * (2 if self.mode == "xts" else 1)
                         for b in BLOCK_CIPHERS[self.cipher])
        return KEY_SIZES[self.mode]

    @property
    def default_key_bits(self) -> int:
        return 0 if self.is_null else DEFAULT_KEY_SIZE[self.mode]

    def check_key_bits(self, bits: int) -> None:
        """Raise SpecError unless ``bits`` is a key size this spec accepts."""
        allowed = self.key_sizes
        if bits not in allowed:
            sizes = ", ".join(map(str, allowed))
            raise SpecError(f"key size {bits} bits is not valid for {self} (allowed: {sizes})")


def parse_spec(text: str) -> CipherSpec:
    """Parse a dm-crypt cipher spec; raise SpecError if cryptfs cannot run it."""
    if text.startswith("capi:"):
        raise SpecError(f"kernel crypto API specs like '{text}' are not supported; "
                        "use the cipher-chainmode-ivmode form (e.g. aes-xts-plain64)")
    if text.strip() in (NULL_CIPHER, f"{NULL_CIPHER}-ecb"):
        return CipherSpec(NULL_CIPHER, "ecb", "null")
    parts = text.strip().split("-")
    if len(parts) != 3 or not all(parts):
        raise SpecError(
            f"cipher '{text}' is not of the form cipher-chainmode-ivmode (e.g. aes-xts-plain64)")
    cipher, mode, iv = parts
    if mode == "adiantum" or cipher in ADIANTUM_CIPHERS:
        return _adiantum_spec(text, cipher, mode, iv)
    if cipher in BLOCK_CIPHERS and mode not in BLOCK_MODES:
        raise SpecError(f"chain mode '{mode}' in '{text}' is not supported with {cipher} "
                        f"(supported: {', '.join(BLOCK_MODES)})")
    if cipher != "aes" and cipher not in BLOCK_CIPHERS:
        raise SpecError(f"cipher '{cipher}' in '{text}' is not supported (supported: aes, "
                        f"{', '.join(BLOCK_CIPHERS)}; {', '.join(ADIANTUM_CIPHERS)} with "
                        "adiantum)")
    if mode not in KEY_SIZES:
        raise SpecError(f"chain mode '{mode}' in '{text}' is not supported "
                        f"(supported: {', '.join(KEY_SIZES)})")
    ivmode, _, ivopts = iv.partition(":")
    if ivmode not in IV_MODES:
        raise SpecError(f"IV mode '{ivmode}' in '{text}' is not supported "
                        f"(supported: {', '.join(IV_MODES)})")
    IV_MODES[ivmode].check_opts(ivopts or None, text)
    return CipherSpec(cipher, mode, ivmode, ivopts or None)


def _adiantum_spec(text: str, cipher: str, mode: str, iv: str) -> CipherSpec:
    if cipher not in ADIANTUM_CIPHERS or mode != "adiantum":
        raise SpecError(f"'{text}': Adiantum is written "
                        "xchacha12,aes-adiantum-IVMODE or xchacha20,aes-adiantum-IVMODE")
    if iv not in ADIANTUM_IV_MODES:
        raise SpecError(f"IV mode '{iv}' in '{text}' is not supported with Adiantum "
                        f"(supported: {', '.join(ADIANTUM_IV_MODES)})")
    return CipherSpec(cipher, mode, iv)
