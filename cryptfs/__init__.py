"""cryptfs: a userspace dm-crypt — LUKS and plain dm-crypt images, over FUSE or from Python.

The Python API (see README, "Python API")::

    import cryptfs
    with cryptfs.open_image("disk.img", passphrase="...") as device:
        first_sector = device.read(512)

* :func:`open_image` — an image's plaintext as a file object (:class:`EncryptedImage`);
* :func:`format_image` — a new LUKS1 or LUKS2 header, as ``cryptfs format``;
* :func:`read_header` — the parsed LUKS header, as ``cryptfs dump`` shows it;
* :mod:`cryptfs.errors` — what they raise.

They are imported on first use, so ``import cryptfs`` stays cheap for the command line.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["EncryptedImage", "errors", "format_image", "open_image", "read_header"]

if TYPE_CHECKING:
    from cryptfs import errors
    from cryptfs.api import EncryptedImage, format_image, open_image, read_header


def __getattr__(name: str):
    # import_module, not ``from cryptfs import errors``: that would ask this very function
    if name == "errors":
        return importlib.import_module("cryptfs.errors")
    if name in __all__:
        return getattr(importlib.import_module("cryptfs.api"), name)
    raise AttributeError(f"module 'cryptfs' has no attribute {name!r}")
