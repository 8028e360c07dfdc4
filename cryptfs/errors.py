"""The errors cryptfs raises, flat and in one place.

Every error a user can cause is a :class:`CryptfsError` whose message is one line that names
what is wrong and what is allowed.  The CLI prints that line and exits non-zero;
``cryptfs.fuse.operations`` is the only place on the trio plane that turns errors into errno
values for the kernel (``DeviceError.errno``); the native plane has its own single point in C.
Messages never contain key material or passphrases.
"""

import errno as _errno


class CryptfsError(Exception):
    """A failure with a one-line, user-facing message; ``exit_code`` is the CLI's status
    (cryptsetup's convention: 1 bad parameters, 2 bad key material, 4 bad device, 5 busy)."""

    exit_code = 1


class ConfigError(CryptfsError):
    """A bad config file or option: unknown key, wrong type, impossible value."""


class SpecError(CryptfsError):
    """An unsupported cipher specification or key size."""


class KeyMaterialError(CryptfsError):
    """Key material is missing or unusable (short key file, wrong passphrase...)."""

    exit_code = 2


class NoPassphrase(KeyMaterialError):
    """The prompt or the key file gave nothing."""


class WrongPassphrase(KeyMaterialError):
    """The passphrase opens no key slot (at a terminal, cryptfs asks again)."""


class ImageError(CryptfsError):
    """The ciphertext image is missing, too small, locked or unreadable."""

    exit_code = 4


class FormatError(ImageError):
    """The image's on-disk header is refused: invalid by cryptsetup's rules, or a format cryptfs
    cannot serve.  Exit 1, as cryptsetup exits for a header it refuses (-EINVAL)."""

    exit_code = 1


class MountError(CryptfsError):
    """The mountpoint is missing, not a directory, or not a cryptfs mount."""

    exit_code = 4


class BusyError(CryptfsError):
    """The image or mountpoint is in use (locked image, mounted mountpoint, open device)."""

    exit_code = 5


class BackendError(CryptfsError):
    """A crypto backend cannot be created or failed at open."""


class DeviceError(CryptfsError):
    """An I/O request the device refuses; carries the errno the kernel should see."""

    def __init__(self, message: str, errno: int = _errno.EIO):
        super().__init__(message)
        self.errno = errno


class DependencyError(CryptfsError):
    """Something this needs is not installed (a Python extra, a system tool); the message
    names what to install."""
