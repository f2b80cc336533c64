"""The suite's name for the fault-injecting fake upstream, which ships in the
plugin authors' kit (:mod:`pypicache.testing`) so a third-party upstream
provider meets the same faults.  See its module for the routes and faults."""

from pypicache.testing._fake_upstream import (
    FAULTS,
    JSON_TYPE,
    TEXT_HTML_TYPE,
    V1_HTML_TYPE,
    FakeUpstream,
    negotiate,
)

__all__ = ["FakeUpstream", "FAULTS", "JSON_TYPE", "V1_HTML_TYPE", "TEXT_HTML_TYPE", "negotiate"]
