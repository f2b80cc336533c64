"""The ``pypicache`` administration command."""
