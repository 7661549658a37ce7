"""The one error type of the data layer: bad input or state that the user can fix."""


class DataError(ValueError):
    """The message names the problem and the fix; the CLI prints it without a traceback."""
