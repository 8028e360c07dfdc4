"""The options of a new header (``format``) and of a new key slot (``format``, ``luksAddKey``,
``luksChangeKey``, ``config``), declared once as cryptsetup takes them, and the key derivation
they come to here."""

import os
from dataclasses import dataclass

from cryptfs.errors import ConfigError
from cryptfs.formats.kdf import (
    ARGON2_MAX_MEMORY,
    ARGON2_MAX_PARALLEL,
    ARGON2_MIN_MEMORY,
    ARGON2_MIN_TIME,
    KINDS,
    PBKDF2_MAX_ITERATIONS,
    PBKDF2_MIN_ITERATIONS,
    Kdf,
    argon2_time_for,
    pbkdf2_iterations_for,
)
from cryptfs.util.options import between, choice, option, parse_size

DIGEST_MS = 125         # cryptsetup spends ~1/8 s on the volume key digest
SALT_BYTES = 32


@dataclass
class PbkdfOptions:
    pbkdf: str = option("", "key derivation: pbkdf2, argon2id or argon2i (default: argon2id for "
                        "LUKS2, pbkdf2 for LUKS1)", choice("", *KINDS), flags=("--pbkdf",),
                        metavar="KIND")
    hash: str = option("sha256", "hash of PBKDF2, the anti-forensic splitter and the LUKS2 "
                       "digest (LUKS1 key slots use the header's)", flags=("--hash",),
                       metavar="NAME")
    iter_time: int = option(2000, "milliseconds unlocking should take: PBKDF2 iterations or the "
                            "Argon2 time cost are measured to it", between(1, 3600_000),
                            flags=("-i", "--iter-time"), metavar="MS")
    force_iterations: int = option(0, "fixed PBKDF2 iterations or Argon2 time cost instead of "
                                   "measuring (0: measure)", between(0, PBKDF2_MAX_ITERATIONS),
                                   flags=("--pbkdf-force-iterations",), metavar="N")
    memory: int = option(1024 * 1024, "Argon2 memory in KiB",
                         between(ARGON2_MIN_MEMORY, ARGON2_MAX_MEMORY),
                         flags=("--pbkdf-memory",), metavar="KIB")
    parallel: int = option(4, "Argon2 threads, at most the number of CPUs online",
                           between(1, ARGON2_MAX_PARALLEL), flags=("--pbkdf-parallel",),
                           metavar="N")


@dataclass
class FormatOptions(PbkdfOptions):
    version: str = option("luks2", "LUKS version: luks1 or luks2", choice("luks1", "luks2"),
                          flags=("--type",),
                          metavar="luks1|luks2")
    cipher: str = option("aes-xts-plain64", "cipher spec of the data (and the key slots)",
                         flags=("-c", "--cipher"), metavar="SPEC")
    key_bits: int = option(0, "volume key size in bits; 0 picks the cipher's default (XTS 512, "
                           "CBC 256)", between(0, 512), flags=("-s", "--key-size"),
                           metavar="BITS")
    sector_size: int = option(512, "encryption sector size, 512..4096 (LUKS2)",
                              flags=("--sector-size",), metavar="BYTES")
    size: int = option(0, "create IMAGE with this size (bytes, or K/M/G/T suffix); 0: IMAGE "
                       "exists", between(0, 2**63), flags=("--size",), metavar="SIZE",
                       parse=parse_size)
    header: str = option("", "write a detached header to FILE; the image is not touched",
                         flags=("--header",), metavar="FILE")


#: LUKS2 key slot priorities (``config --priority``) and how they are stored
PRIORITIES = {"ignore": 0, "normal": 1, "prefer": 2}


def kdf_kind(o: PbkdfOptions, version: str) -> str:
    """The key derivation ``o`` asks for, or the ``version``'s default; ConfigError if that
    version has no such key derivation (LUKS1: PBKDF2 only)."""
    from cryptfs.formats.luks import FORMATS  # here: options need not load the formats
    header = FORMATS[version]
    kind = o.pbkdf or header.DEFAULT_KDF
    if kind not in header.KDF_KINDS:
        raise ConfigError(f"{version.upper()} supports only --pbkdf "
                          f"{' or '.join(header.KDF_KINDS)}")
    return kind


def new_kdf(o: PbkdfOptions, version: str, key_bytes: int, hash_name: str | None = None) -> Kdf:
    """A fresh salt and the parameters ``o`` asks for, measured on this machine; ConfigError
    if they are not possible (:func:`kdf_kind`, costs below cryptsetup's minimum).
    ``hash_name``: PBKDF2's hash where the header decides it (LUKS1), else ``o.hash``."""
    kind = kdf_kind(o, version)
    salt = os.urandom(SALT_BYTES)
    if kind == "pbkdf2":
        hash_name = hash_name or o.hash
        iterations = o.force_iterations or pbkdf2_iterations_for(hash_name, o.iter_time,
                                                                 key_bytes)
        if iterations < PBKDF2_MIN_ITERATIONS:
            raise ConfigError(f"PBKDF2 needs at least {PBKDF2_MIN_ITERATIONS} iterations")
        kdf = Kdf(kind, salt, iterations, hash_name)
    else:
        parallel = max(1, min(o.parallel, os.cpu_count() or 1))
        time_cost = o.force_iterations or argon2_time_for(kind, o.iter_time, o.memory, parallel,
                                                          key_bytes)
        if time_cost < ARGON2_MIN_TIME:
            raise ConfigError(f"{kind} needs a time cost of at least {ARGON2_MIN_TIME}")
        kdf = Kdf(kind, salt, time_cost, memory=o.memory, parallel=parallel)
    kdf.check()
    return kdf


def digest_iterations(o: PbkdfOptions, hash_name: str, key_bytes: int) -> int:
    """PBKDF2 iterations of the volume key digest: about 1/8 s, or the minimum when the user
    fixed the costs (as cryptsetup does with --pbkdf-force-iterations)."""
    if o.force_iterations:
        return PBKDF2_MIN_ITERATIONS
    return max(PBKDF2_MIN_ITERATIONS, pbkdf2_iterations_for(hash_name, DIGEST_MS, key_bytes))
