"""Data: task files in (files), token batches out (encode), and a built-in demo set (demo)."""
