"""Declares the ``twistd pypicache`` subcommand; everything else is in pypicache.daemon.tap."""

from twisted.application.service import ServiceMaker

pypicache = ServiceMaker(
    "pypicache",
    "pypicache.daemon.tap",
    "A PyPI-compatible caching proxy and private package server.",
    "pypicache",
)
