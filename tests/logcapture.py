"""Every twisted.logger event emitted while a test runs (the ``logs`` fixture).

One capture for the whole suite, so a test asserts on what an operator would
read: formatted lines, with their level.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, formatEvent


class LogCapture:
    """Every twisted.logger event emitted while installed."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def lines(self, min_level: LogLevel = LogLevel.info) -> list[str]:
        """``[level] message`` for every event at ``min_level`` or above."""
        out = []
        for event in self.events:
            level = event.get("log_level")
            if level is not None and level >= min_level:
                out.append(f"[{level.name}] {formatEvent(event)}")
        return out

    def has(self, *needles: str, min_level: LogLevel = LogLevel.info) -> bool:
        return any(all(n in line for n in needles) for line in self.lines(min_level))

    def errors_about(self, needle: str) -> list[str]:
        """Error and critical lines that mention ``needle``."""
        return [line for line in self.lines(LogLevel.error) if needle in line]

    @property
    def tracebacks(self) -> list[dict[str, Any]]:
        """Events that carry a Failure: a bug, where an error should have been a line."""
        return [e for e in self.events if e.get("log_failure") is not None]

    def clear(self) -> None:
        self.events.clear()
