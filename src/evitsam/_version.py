"""The package version, read by the package root and by the runtime (the cache key of exported graphs)."""

__version__ = "0.1.0"
