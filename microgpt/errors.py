"""Errors a user can fix: the command line prints their message on one line and exits 2.

Exports: `UserError`.
"""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""

    exit_code = 2
