"""Where the device's bytes live in the image and how dm-crypt numbers its data units.

dm-crypt addresses everything in 512-byte sectors: the payload starts ``offset`` sectors into
the image, and the IV of a data unit is computed from ``cc_sector = device sector + iv_offset``
(``--skip``).  With a data unit (``sector_size``) larger than 512 bytes that number still counts
512-byte sectors — consecutive data units step by ``sector_size / 512`` — unless
``iv_large_sectors`` is set, in which case it counts data units.
"""

from dataclasses import dataclass, field

from cryptfs.errors import ConfigError, ImageError

SECTOR = 512
MIN_SECTOR_SIZE = 512
MAX_SECTOR_SIZE = 4096


def check_sector_size(size: int) -> None:
    if not (MIN_SECTOR_SIZE <= size <= MAX_SECTOR_SIZE and size & (size - 1) == 0):
        raise ConfigError(f"sector size {size} is not a power of two between "
                          f"{MIN_SECTOR_SIZE} and {MAX_SECTOR_SIZE}")


@dataclass(frozen=True)
class Geometry:
    sector_size: int            # bytes per data unit (the encryption sector)
    payload_offset: int         # bytes from the start of the image to device byte 0
    size: int                   # device size in bytes, a multiple of sector_size
    iv_offset: int = 0          # --skip: added to the device sector before IV generation
    iv_large_sectors: bool = False
    #: 512-byte sectors per data unit
    sectors_per_unit: int = field(init=False, repr=False, compare=False)
    #: IV-sector increment between consecutive data units
    iv_step: int = field(init=False, repr=False, compare=False)
    #: the IV sector of data unit 0: iv_sector(unit) = unit * iv_step + iv_base
    iv_base: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        spu = self.sector_size // SECTOR
        object.__setattr__(self, "sectors_per_unit", spu)
        object.__setattr__(self, "iv_step", 1 if self.iv_large_sectors else spu)
        # dm-crypt: cc_sector = unit * spu + iv_offset, divided by spu with large IVs
        object.__setattr__(self, "iv_base",
                           self.iv_offset // spu if self.iv_large_sectors else self.iv_offset)

    def iv_sector(self, unit: int) -> int:
        """The IV sector of device data unit ``unit`` (0-based, in sector_size units)."""
        return unit * self.iv_step + self.iv_base

    @classmethod
    def for_image(cls, image_size: int, sector_size: int, offset_sectors: int,
                  iv_offset: int = 0, iv_large_sectors: bool = False,
                  size_sectors: int | None = None) -> "Geometry":
        """Lay a device over an image, refusing what dm-crypt would refuse."""
        check_sector_size(sector_size)
        per_unit = sector_size // SECTOR
        if offset_sectors < 0 or iv_offset < 0:
            raise ConfigError("offset and skip must not be negative")
        if offset_sectors % per_unit:
            raise ConfigError(f"offset {offset_sectors} is not aligned to the "
                              f"{sector_size}-byte sector size")
        if iv_large_sectors and iv_offset % per_unit:
            raise ConfigError(f"skip {iv_offset} is not aligned to the {sector_size}-byte "
                              "sector size, as iv_large_sectors requires")
        payload = offset_sectors * SECTOR
        if payload >= image_size:
            raise ImageError(f"offset {offset_sectors} sectors ({payload} bytes) is at or beyond "
                             f"the end of the image ({image_size} bytes)")
        available = (image_size - payload) // SECTOR * SECTOR
        if size_sectors is not None:
            if size_sectors * SECTOR > available:
                raise ImageError(f"device size {size_sectors} sectors does not fit in the image "
                                 f"({available // SECTOR} sectors after the offset)")
            available = size_sectors * SECTOR
        if available < sector_size:
            raise ImageError(f"the image holds {available} bytes after the offset, less than "
                             f"one {sector_size}-byte sector")
        if available % sector_size:
            raise ImageError(f"device size {available} bytes is not a multiple of the "
                             f"{sector_size}-byte sector size")
        return cls(sector_size, payload, available, iv_offset, iv_large_sectors)
