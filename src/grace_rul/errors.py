"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class GraceError(Exception):
    """A problem the user can fix (bad input, bad data, bad config); printed without traceback."""
