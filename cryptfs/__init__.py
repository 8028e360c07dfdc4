"""cryptfs: a userspace dm-crypt over FUSE."""

__version__ = "0.1.0"
