"""Errors the CLI reports as one clear line (no traceback)."""


class UserError(Exception):
    """Bad input or state the user can fix; the message names the problem and the fix."""
