"""User-facing errors.

A :class:`UserError` is a problem with the user's input (config, data, paths, arguments). The CLI prints
its message on one line and exits with code 2; no traceback is shown.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message says what and where (file:line or config key)."""


class NotSupportedError(UserError):
    """A combination or feature that polytask does not implement (yet)."""
