"""The one exception type users see: its message is a complete, one-line explanation."""


class MusicvizError(Exception):
    """A problem with the user's input, files or environment, explained in one line.

    The CLI prints `error: <message>` and exits with status 1; it never shows a traceback
    for this type.
    """
