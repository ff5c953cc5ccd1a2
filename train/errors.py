"""User-facing errors: the CLIs print these as one line (no traceback) and exit non-zero."""


class VaeganError(Exception):
    """A problem with the user's input (path, checkpoint, option) rather than a bug."""
