"""The one error type for bad input data."""


class DataError(ValueError):
    """Malformed or missing input data; the message names the file at fault."""
