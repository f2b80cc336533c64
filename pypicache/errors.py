"""Exceptions that cross module boundaries and are not about the data model."""


class ConfigError(Exception):
    """A bad configuration: the message is one line naming the key or value.

    Raised at start-up (by config loading and by provider factories); the
    daemon prints the message and exits instead of showing a traceback.
    """
