"""Layer 2: the facts about ciphers — cipher specs, the one IV table, key buffers."""
