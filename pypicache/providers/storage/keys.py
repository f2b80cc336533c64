"""The one check every storage provider makes on a key before using it.

Shared by the built-in providers and offered to third-party ones: a key is
the only client-influenced string a storage sees, and it must never reach a
path or an object name unchecked.
"""

from __future__ import annotations

from pypicache.model import is_sha256

__all__ = ["check_key"]


def check_key(sha256: object) -> str:
    """Return ``sha256`` if it is a valid key, else raise ValueError.

    Called first by every method taking a key: nothing else may be done with
    an unchecked string (it could be ``../../etc/passwd``).
    """
    # The length check guards against a trailing newline, which a ``$``
    # anchored pattern would let through.
    if not is_sha256(sha256) or len(sha256) != 64:  # type: ignore[arg-type]
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256  # type: ignore[return-value]
