"""On-disk formats, one module each; :func:`open_volume` picks one by ``[device] type``."""

from ..config import Config
from ..errors import ConfigError
from ..image import Image
from ..volume import KeySource, Volume
from . import plain

OPENERS = {"plain": plain.open_plain}


def open_volume(image: Image, config: Config, keys: KeySource) -> Volume:
    """Read the header (if any), unlock the key, lay out the device; CryptfsError on failure."""
    try:
        opener = OPENERS[config.device.type]
    except KeyError:
        raise ConfigError(f"unknown device type '{config.device.type}' "
                          f"(known: {', '.join(OPENERS)})") from None
    return opener(image, config, keys)
