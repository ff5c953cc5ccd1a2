"""The base of every user-facing error, torch-free: ``vaegan.train``'s ``VaeganError`` and ``vaegan.runtime``'s
``VaeganRuntimeError`` derive from it, so one CLI wrapper (``vaegan.train.cli.friendly_errors``) turns any of them
into a one-line message without importing the other package."""


class UserError(Exception):
    """A problem with the user's input (path, checkpoint, artifacts, option) rather than a bug."""
