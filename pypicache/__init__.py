"""pypicache: a PyPI-compatible caching proxy and private package server."""

__version__ = "0.1.0"
