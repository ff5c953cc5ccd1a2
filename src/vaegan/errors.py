"""The user-error and exit-code convention of every vaegan CLI, torch-free.

Exit codes: 0 success; 1 the command ran but some of its inputs or outputs failed (``vaegan-run``: a frame that
could not be read; ``vaegan-export``: a graph that failed validation), each failure reported; 2 a usage or input
error (a bad option, path, checkpoint, data set or artifacts; a missing backend): one line ``Error: ...`` on stderr,
no traceback (click's own usage errors exit 2 as well); 130 interrupted.

``UserError`` is the base of every such error (``vaegan.train``'s ``VaeganError``, ``vaegan.runtime``'s
``VaeganRuntimeError``), so ``friendly_errors`` turns any of them into that line without importing either package.
"""

from __future__ import annotations

import functools

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """A problem with the user's input (path, checkpoint, artifacts, option) rather than a bug."""

    exit_code = EXIT_USAGE  # a subclass for "ran, but some outputs failed" sets EXIT_FAILED


def friendly_errors(fn):
    """Decorate a click command: a ``UserError`` becomes one ``Error: ...`` line on stderr and its ``exit_code``; an
    interrupt, ``Interrupted.`` and 130."""

    @functools.wraps(fn)
    def wrapper(*a, **k):
        import click

        try:
            return fn(*a, **k)
        except UserError as e:
            err = click.ClickException(str(e))
            err.exit_code = e.exit_code
            raise err from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            raise SystemExit(EXIT_INTERRUPTED) from None

    return wrapper
