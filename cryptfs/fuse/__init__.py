"""Layer 7: the FUSE front door — the trio plane (daemon, operations, queue, fallocate) and the
native plane's C extension — and the mount table helpers."""
