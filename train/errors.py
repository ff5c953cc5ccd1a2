"""User-facing errors: the CLIs print these as one line (no traceback) and exit non-zero."""

from vaegan.errors import UserError


class VaeganError(UserError):
    """A problem with the user's input (path, checkpoint, option) rather than a bug."""
