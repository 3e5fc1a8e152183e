"""The backend's one exception type. Messages say what is wrong and what to do about it."""

from __future__ import annotations


class SparseFitError(Exception):
    """A problem the user can act on: bad data file, bad config, wrong base model, diverged training.

    Where the problem is located in a file, pass `path`, `line` and `field` so the message names them;
    `message` keeps the text without them, for a caller that re-raises it under another name.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.message, self.path, self.line, self.field = message, path, line, field
        super().__init__(with_location(message, path=path, line=line, field=field))


def with_location(message: str, *, path: str | None = None, line: int | None = None,
                  field: str | None = None) -> str:
    """"file:line, field 'x': message" with whichever parts are known (shared by the annotation layer)."""
    where = []
    if path is not None:
        where.append(str(path) + (f":{line}" if line is not None else ""))
    elif line is not None:
        where.append(f"line {line}")
    if field is not None:
        where.append(f"field '{field}'")
    return (", ".join(where) + ": " if where else "") + message
