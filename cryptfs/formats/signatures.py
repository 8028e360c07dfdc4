"""Other on-disk signatures next to a LUKS header, found by blkid's low-level probing — what
cryptsetup asks libblkid before it trusts one LUKS2 header copy alone: if the primary copy is
gone because an LVM2 physical volume, a filesystem or a partition table was written over it,
the image now belongs to someone else."""

import os
import shutil
import subprocess

from cryptfs.errors import FormatError

#: util-linux's blkid; cryptsetup's probe: superblocks (LUKS left out) and partition tables
PROBE = ["-p", "-n", "nocrypto_LUKS", "-o", "export"]
FOUND, NOTHING, AMBIGUOUS = 0, 2, 8


def foreign_signature(path: str) -> str | None:
    """What blkid finds on ``path`` besides LUKS ("LVM2_member", "ext4", "partition table
    dos"...), None if nothing.  FormatError if blkid is missing or cannot probe the file —
    cryptsetup refuses then too."""
    blkid = shutil.which("blkid", path=os.pathsep.join(
        [os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))
    if blkid is None:
        raise FormatError("blkid (util-linux) is needed to check a LUKS2 image whose header "
                          "copies differ, and it is not installed")
    result = subprocess.run([blkid, *PROBE, path], capture_output=True, text=True,
                            errors="replace")
    if result.returncode == NOTHING:
        return None
    if result.returncode == AMBIGUOUS:
        return "several signatures (blkid: ambiguous)"
    if result.returncode != FOUND:
        raise FormatError(f"blkid cannot probe {path}: {result.stderr.strip() or 'failed'}")
    tags = dict(line.partition("=")[::2] for line in result.stdout.splitlines())
    if "PTTYPE" in tags:
        return f"partition table {tags['PTTYPE']}"
    return tags.get("TYPE", "an unknown signature")
