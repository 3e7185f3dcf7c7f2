"""Errors meant for users: one clear line, no traceback from deep inside."""


class UserError(Exception):
    """Bad input or an impossible request; the message says what is wrong and what to do."""


class TraceError(UserError):
    """The model cannot be traced into a graph at all."""
