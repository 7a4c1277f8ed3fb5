"""Errors that reach the user as one plain line (the CLI prints them without a traceback)."""


class UserError(RuntimeError):
    """Something the user can fix: a bad flag, a missing bundle, no broker."""
