"""Errors that the CLI turns into a one-line ``error: ...`` message and exit status 2."""


class AuditError(Exception):
    """Bad input or an impossible request: the user can fix it, so no traceback is shown."""
