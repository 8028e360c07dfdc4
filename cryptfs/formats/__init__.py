"""On-disk formats, one module each; :func:`open_volume` picks one by ``[device] type``.

``plain`` has no header; ``luks`` detects LUKS1 or LUKS2 from the header (``luks1`` / ``luks2``
insist on one).  Each returns a :class:`~cryptfs.volume.Volume`: cipher, key, geometry.
"""

from ..config import Config
from ..image import Image
from ..volume import KeySource, Volume


def open_volume(image: Image, config: Config, keys: KeySource) -> Volume:
    """Read the header (if any), unlock the key, lay out the device; CryptfsError on failure."""
    # imported here, so that importing one format module costs only that one
    from . import luks, plain
    opener = plain.open_plain if config.device.type == "plain" else luks.open_luks
    return opener(image, config, keys)
