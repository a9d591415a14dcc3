"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class GraceError(Exception):
    """A problem the user can fix (bad input, bad data, bad config); printed without traceback."""


class WriteError(GraceError, OSError):
    """A file could not be written (disk full, read-only directory): one line, still an
    ``OSError`` for code that handles those."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def brief(value: object, limit: int = 80) -> str:
    """A bounded one-line ``repr`` of ``value`` for messages: never more than ``limit`` chars.

    Built with :mod:`reprlib`, so a huge or deeply nested value (a YAML alias bomb) costs
    no more to describe than a small one.
    """
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxtuple, r.maxset = 2, 4, 4, 4, 4
    r.maxstring = r.maxother = r.maxlong = limit
    text = " ".join(r.repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first line of an exception's message (its type when it has none), cut to ``limit``
    characters (``None``: not cut)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
