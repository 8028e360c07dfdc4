"""Cipher specifications in dm-crypt's ``cipher-chainmode-ivmode[:ivopts]`` form.

``parse_spec("aes-cbc-essiv:sha256")`` → ``CipherSpec(cipher="aes", mode="cbc",
ivmode="essiv", ivopts="sha256")``.  Only what cryptfs can compute byte-exactly is accepted;
anything else raises :class:`SpecError` naming the part that is not supported.

``ecb`` has no IV: dm-crypt takes ``aes-ecb`` (what cryptsetup writes) and ignores an IV mode
after it (``aes-ecb-plain64``, what qemu-img writes), but refuses ``essiv`` there, which needs
an IV to encrypt.
"""

from dataclasses import dataclass

from cryptfs.crypto.gcrypt import KEY_BITS, block_bytes
from cryptfs.crypto.ivgen import IV_MODES
from cryptfs.crypto.lrw import TWEAK_KEY_BYTES
from cryptfs.errors import SpecError

#: Block cipher → its key sizes in bits: AES through OpenSSL (pyca/cryptography and the native
#: core's EVP), the others through libgcrypt (cryptfs/crypto/gcrypt.py holds theirs).
CIPHER_KEY_BITS = {"aes": (128, 192, 256), **KEY_BITS}
#: AES-XTS halves OpenSSL has (no AES-192-XTS, which the kernel also takes).
_AES_XTS_BITS = (128, 256)
#: Chain modes of the block ciphers.  XTS and LRW tweak 128-bit blocks: the kernel's xts and lrw
#: templates refuse a 64-bit block cipher (cast5, blowfish).
CHAIN_MODES = ("xts", "cbc", "ecb", "lrw")
_WIDE_BLOCK_MODES = ("xts", "lrw")
#: cryptsetup's default LUKS key size (DEFAULT_LUKS1_KEYBITS), doubled for xts- modes
#: (get_adjusted_key_size in src/utils_luks.c).
_CRYPTSETUP_DEFAULT_BITS = 256
#: Adiantum (``xchacha12,aes-adiantum-plain64``, ``xchacha20,...``): the cipher part names the
#: stream cipher and its round count → the chain the backends run (backends/adiantum.c).
ADIANTUM_CIPHERS = {"xchacha12,aes": "adiantum12", "xchacha20,aes": "adiantum20"}
ADIANTUM_KEY_BITS = 256
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
        if self.mode == "ecb" and self.ivmode == "null":
            return f"{self.cipher}-ecb"
        iv = f"{self.ivmode}:{self.ivopts}" if self.ivopts else self.ivmode
        return f"{self.cipher}-{self.mode}-{iv}"

    @property
    def is_null(self) -> bool:
        return self.cipher == NULL_CIPHER

    @property
    def chain(self) -> str:
        """What converts a data unit: ``xts``, ``cbc``, ``ecb``, ``lrw`` (AES),
        ``CIPHER-MODE`` (``serpent-xts``, ``cast5-cbc``...: libgcrypt), ``adiantum12``,
        ``adiantum20`` or ``null``."""
        if self.is_null:
            return "null"
        if self.mode == "adiantum":
            return ADIANTUM_CIPHERS[self.cipher]
        return self.mode if self.cipher == "aes" else f"{self.cipher}-{self.mode}"

    @property
    def key_sizes(self) -> tuple[int, ...]:
        """The key sizes in bits this spec accepts (XTS: two keys; LRW: one and a 128-bit
        tweak key)."""
        if self.is_null:
            return (0,)
        if self.mode == "adiantum":
            return (ADIANTUM_KEY_BITS,)
        single = CIPHER_KEY_BITS[self.cipher]
        if self.mode == "xts":
            return tuple(2 * b for b in (_AES_XTS_BITS if self.cipher == "aes" else single))
        if self.mode == "lrw":
            return tuple(b + 8 * TWEAK_KEY_BYTES for b in single)
        return single

    @property
    def default_key_bits(self) -> int:
        """cryptsetup's default, or the largest size below it the cipher takes (cast5: 128)."""
        if self.is_null:
            return 0
        default = _CRYPTSETUP_DEFAULT_BITS * (2 if self.mode == "xts" else 1)
        return max(b for b in self.key_sizes if b <= default)

    def check_key_bits(self, bits: int) -> None:
        """Raise SpecError unless ``bits`` is a key size this spec accepts."""
        allowed = self.key_sizes
        if bits not in allowed:
            raise SpecError(f"key size {bits} bits is not valid for {self} "
                            f"(allowed: {_describe(allowed)})")


def _describe(sizes: tuple[int, ...]) -> str:
    """``128, 192, 256``, or a long even run as ``32..448 in steps of 8``."""
    if len(sizes) > 4 and sizes == tuple(range(sizes[0], sizes[-1] + 1, sizes[1] - sizes[0])):
        return f"{sizes[0]}..{sizes[-1]} in steps of {sizes[1] - sizes[0]}"
    return ", ".join(map(str, sizes))


def parse_spec(text: str) -> CipherSpec:
    """Parse a dm-crypt cipher spec; raise SpecError if cryptfs cannot run it."""
    if text.startswith("capi:"):
        raise SpecError(f"kernel crypto API specs like '{text}' are not supported; "
                        "use the cipher-chainmode-ivmode form (e.g. aes-xts-plain64)")
    if text.strip() in (NULL_CIPHER, f"{NULL_CIPHER}-ecb"):
        return CipherSpec(NULL_CIPHER, "ecb", "null")
    parts = text.strip().split("-", 2)     # the IV part may hold a hash with a dash
    if len(parts) == 2 and parts[1] == "ecb":
        parts.append("null")                    # no IV: dm-crypt's only mode without one
    if len(parts) != 3 or not all(parts):
        raise SpecError(
            f"cipher '{text}' is not of the form cipher-chainmode-ivmode (e.g. aes-xts-plain64)")
    cipher, mode, iv = parts
    if mode == "adiantum" or cipher in ADIANTUM_CIPHERS:
        return _adiantum_spec(text, cipher, mode, iv)
    if cipher not in CIPHER_KEY_BITS:
        raise SpecError(f"cipher '{cipher}' in '{text}' is not supported (supported: "
                        f"{', '.join(CIPHER_KEY_BITS)}; {', '.join(ADIANTUM_CIPHERS)} with "
                        "adiantum)")
    if mode not in CHAIN_MODES:
        raise SpecError(f"chain mode '{mode}' in '{text}' is not supported "
                        f"(supported: {', '.join(CHAIN_MODES)})")
    if mode in _WIDE_BLOCK_MODES and block_bytes(cipher) != 16:
        raise SpecError(f"{mode} needs a 128-bit block cipher; {cipher} has "
                        f"{8 * block_bytes(cipher)}-bit blocks ('{text}')")
    ivmode, _, ivopts = iv.partition(":")
    if ivmode not in IV_MODES:
        raise SpecError(f"IV mode '{ivmode}' in '{text}' is not supported "
                        f"(supported: {', '.join(IV_MODES)})")
    if mode == "ecb" and ivmode == "essiv":
        raise SpecError(f"'{text}': ESSIV encrypts an IV, and ecb has none (dm-crypt refuses "
                        "it too)")
    IV_MODES[ivmode].check_opts(ivopts or None, text, cipher)
    return CipherSpec(cipher, mode, ivmode, ivopts or None)


def _adiantum_spec(text: str, cipher: str, mode: str, iv: str) -> CipherSpec:
    if cipher not in ADIANTUM_CIPHERS or mode != "adiantum":
        raise SpecError(f"'{text}': Adiantum is written "
                        "xchacha12,aes-adiantum-IVMODE or xchacha20,aes-adiantum-IVMODE")
    if iv not in ADIANTUM_IV_MODES:
        raise SpecError(f"IV mode '{iv}' in '{text}' is not supported with Adiantum "
                        f"(supported: {', '.join(ADIANTUM_IV_MODES)})")
    return CipherSpec(cipher, mode, iv)
