"""Layer 4: the block device — geometry, the image, the convert loop, the device, stats, the
config that shapes them, and the volume a format hands over."""
