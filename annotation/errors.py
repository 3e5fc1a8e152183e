"""The annotation layer's one exception type. Messages tell the admin or annotator what to do next."""

from __future__ import annotations

from sparsefit.errors import with_location  # torch-free


class AnnotationError(Exception):
    """A problem a user can act on: bad predictions or preset file, unknown link, item already taken.

    When the problem sits in a file, pass `path`, `line` and `field` so the message names them.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        self.reason = message  # without the location: what an annotator is shown
        super().__init__(with_location(message, path=path, line=line, field=field))
