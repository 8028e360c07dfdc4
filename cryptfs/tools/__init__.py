"""Layer 8: tools over whole stacks — verify, stress, bench."""
