"""On-disk formats; :func:`open_volume` picks one by ``[device] type``.

``plain`` has no header; ``luks`` detects LUKS1 or LUKS2 from the header (``luks1`` / ``luks2``
insist on one), whose class (:mod:`.luks1`, :mod:`.luks2.header`) answers the questions of
:mod:`.protocol`.  Each returns a :class:`~cryptfs.core.volume.Volume`: cipher, key, geometry.
"""

from cryptfs.core.config import Config
from cryptfs.core.image import Image
from cryptfs.core.volume import KeySource, Volume


def open_volume(image: Image, config: Config, keys: KeySource) -> Volume:
    """Read the header (if any), unlock the key, lay out the device; CryptfsError on failure."""
    # imported here, so that importing one format module costs only that one
    from cryptfs.formats import luks, plain
    opener = plain.open_plain if config.device.type == "plain" else luks.open_luks
    return opener(image, config, keys)
