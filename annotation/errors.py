"""The annotation layer's one exception type. Messages tell the admin or annotator what to do next."""

from __future__ import annotations


class AnnotationError(Exception):
    """A problem a user can act on: bad predictions or preset file, unknown link, item already taken.

    When the problem sits in a file, pass `path`, `line` and `field` so the message names them.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        self.reason = message  # without the location: what an annotator is shown
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__((", ".join(where) + ": " if where else "") + message)
