"""On-disk formats, one module each; :func:`open_volume` picks one by ``[device] type``.

``plain`` has no header; ``luks`` detects LUKS1 or LUKS2 from the header (``luks1`` / ``luks2``
insist on one).  Each returns a :class:`~cryptfs.volume.Volume`: cipher, key, geometry.
"""

from ..config import Config
from ..image import Image
from ..volume import KeySource, Volume
from . import luks, plain

OPENERS = {"plain": plain.open_plain, "luks": luks.open_luks, "luks1": luks.open_luks,
           "luks2": luks.open_luks}


def open_volume(image: Image, config: Config, keys: KeySource) -> Volume:
    """Read the header (if any), unlock the key, lay out the device; CryptfsError on failure."""
    return OPENERS[config.device.type](image, config, keys)
