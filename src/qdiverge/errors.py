"""Typed errors. Only ``cli.py`` catches them and maps them to exit codes."""


class QdivergeError(Exception):
    """Base class for every error qdiverge raises on purpose."""

    exit_code = 2


class InputError(QdivergeError):
    """A file, option or value the user gave cannot be used (exit 2)."""


class UnsupportedError(InputError):
    """The model uses something qdiverge cannot handle at all (exit 2)."""
