"""The suite's guards (conftest.py) work: a hang fails its own test within
its limit, and whatever a test leaves in the reactor fails that test, by name.

tests/guard_probe.py breaks each rule once; it runs in a child pytest so its
hangs and leaks never touch this process's reactor.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_guards_fail_hangs_and_leaks_and_pass_the_rest():
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/guard_probe.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYPICACHE_TEST_LEAKS"},
    )
    elapsed = time.monotonic() - started
    out = run.stdout + run.stderr
    outcome: dict[str, str] = {}
    for status, name in re.findall(r"^(PASSED|FAILED|ERROR) tests/guard_probe\.py::(\w+)", out, re.M):
        if outcome.get(name, "PASSED") == "PASSED":  # a teardown error outranks the pass before it
            outcome[name] = status
    assert outcome == {
        "test_async_hang": "FAILED",
        "test_sync_hang": "FAILED",
        "test_leaves_a_timer": "ERROR",  # at teardown: the test itself passed
        "test_leaves_a_port": "ERROR",
        "test_leaves_a_timer_allowed": "PASSED",
        "test_clean_after_itself": "PASSED",
    }, out
    assert "test_async_hang took more than 0.5 s" in out
    assert "test_sync_hang took more than 0.5 s (raise it with @pytest.mark.timeout(seconds)) while blocking" in out
    assert re.search(r"left these in the reactor:\n\s+pending call: <DelayedCall .*test_leaves_a_timer", out), out
    assert re.search(r"left these in the reactor:\n\s+open: <.*Port", out), out
    assert "test_leaves_a_timer_allowed: 1: pending call" in out  # listed in the summary
    assert elapsed < 25, elapsed  # the 30 s sleep was cut short
