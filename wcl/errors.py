"""Errors that carry a user-facing message: what is wrong, where, and how to fix it.

The command line prints these without a traceback.
"""


class WCLError(Exception):
    """Base class of errors whose message is meant for the user."""


class DataError(WCLError, ValueError):
    """A dataset root, layout or file is missing or unreadable."""


class ConfigError(WCLError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class NonFiniteLossError(WCLError, FloatingPointError):
    """A loss term became NaN or infinite."""
