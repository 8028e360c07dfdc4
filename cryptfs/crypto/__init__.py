"""Layer 2: the facts about ciphers — cipher specs, the one IV table, hashes by name, key
buffers."""
