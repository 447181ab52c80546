"""``MissingPath``: a path the user gave that does not exist. It is a ``UserError`` (the CLI
prints one line, exit status 2) and a ``FileNotFoundError`` (library callers that catch that
keep working)."""
from __future__ import annotations

from ..errors import UserError


class MissingPath(UserError, FileNotFoundError):
    """A missing file or folder given by the user; ``param`` names the parameter it came in."""
