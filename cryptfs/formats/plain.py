"""Plain dm-crypt: no header; everything comes from the options (``cryptsetup open --type plain``).

The key is either the first ``key_size`` bytes of a key file (never hashed) or a passphrase
hashed with ``[crypto] hash`` (:func:`cryptfs.crypto.keys.hash_passphrase`).
"""

from cryptfs.core.config import Config
from cryptfs.core.geometry import Geometry
from cryptfs.core.image import Image
from cryptfs.core.volume import KeySource, Volume
from cryptfs.crypto.keys import hash_passphrase, key_from_file
from cryptfs.crypto.spec import parse_spec


def open_plain(image: Image, config: Config, keys: KeySource) -> Volume:
    crypto, device = config.crypto, config.device
    spec = parse_spec(crypto.cipher)
    bits = crypto.key_size or spec.default_key_bits
    spec.check_key_bits(bits)
    geometry = Geometry.for_image(image.size, crypto.sector_size, device.offset, device.skip,
                                  crypto.iv_large_sectors)
    material = keys.read(most=bits // 8)
    try:
        if keys.is_file:
            key = key_from_file(material, bits // 8, keys.key_file)
        else:
            key = hash_passphrase(crypto.hash, material, bits // 8)
    finally:
        material.wipe()
    info = {"key_bits": bits, "offset_sectors": device.offset, "skip_sectors": device.skip}
    return Volume("plain", spec, key, geometry, info)
