"""Data files shipped with pipegraph (see README.md here)."""
