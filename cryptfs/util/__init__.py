"""Layer 1: generic helpers with no knowledge of encryption — option declarations, Markdown
tables, progress bars, latency windows."""
