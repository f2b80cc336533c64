"""The suite's name for the distribution builders, which ship in the plugin
authors' kit (:mod:`pypicache.testing`) so third-party providers build the
same files."""

from pypicache.testing import build_sdist, build_wheel, sha256_file, wheel_metadata

__all__ = ["build_wheel", "build_sdist", "wheel_metadata", "sha256_file"]
