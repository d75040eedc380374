"""Errors a user can fix: the command line prints their message on one line and exits with the error's code.

Exports: `UserError` (bad input, exit 2), `WriteFailure` (a write that failed during the run, exit 1),
`Interrupted` (Ctrl-C or SIGTERM, exit 128 + the signal's number).
"""


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""

    exit_code = 2


class WriteFailure(UserError):
    """A write that failed while the run was going (a full disk, a file too large): what was saved before stays."""

    exit_code = 1


class Interrupted(Exception):
    """The user (Ctrl-C) or the system (SIGTERM) asked the process to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
