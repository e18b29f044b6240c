"""The one base class of user-facing errors: bad input or an unusable service, told in one line."""


class HDKDError(Exception):
    """Raised for problems the user can fix; entry points print it without a traceback."""
