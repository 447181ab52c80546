"""The error types and exit codes every command uses (README "Exit codes").

    0    success
    1    a bug: the command prints a traceback
    2    a user error: one line naming the file, flag or value, and a hint
    130  interrupted by Ctrl-C (SIGINT)
    143  stopped by SIGTERM

``UserError`` is a mistake in what the user gave (a path, a value, a name, a damaged file); the
library raises it where it checks such input, naming the parameter, and the CLI prints it as one
line (naming the flag where it knows it) and exits 2. Anything else that escapes a command is a
bug and keeps its traceback. ``UserError`` derives from ``ValueError`` so that library callers
who catch ``ValueError`` keep working.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER = 2
EXIT_INTERRUPTED = 130   # 128 + SIGINT
EXIT_TERMINATED = 143    # 128 + SIGTERM

EXIT_CODES = {EXIT_OK: "success", EXIT_BUG: "a bug (a traceback is printed)",
              EXIT_USER: "a user error (one line naming the file, flag or value, and a hint)",
              EXIT_INTERRUPTED: "interrupted by Ctrl-C", EXIT_TERMINATED: "stopped by SIGTERM"}


class UserError(ValueError):
    """A mistake in the user's input: reported as one line, exit status 2.

    ``param`` names the library parameter the value came in through (``"class_"``, ``"steps"``,
    ``"prompt"``); ``str(e)`` is ``"param: message"`` for library callers, and the CLI, which
    knows which flag feeds which parameter, prints ``"--flag: message"`` instead. Library code
    never spells a CLI flag."""

    def __init__(self, message: str, *, param: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message, self.param, self.hint = message, param, hint

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message


class Terminated(BaseException):
    """Raised by the CLI's SIGTERM handler so that ``finally`` blocks run (exit status 143)."""
