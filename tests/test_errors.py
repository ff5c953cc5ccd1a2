"""vaegan.errors: the exit-code convention every CLI follows (0 ok, 1 some outputs failed, 2 usage or input error,
130 interrupted), through the one wrapper ``friendly_errors``."""

import click
import pytest
from click.testing import CliRunner

from vaegan.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UserError, friendly_errors
from vaegan.export.validate import ExportValidationError
from vaegan.runtime.errors import ArtifactError
from vaegan.train.errors import VaeganError


def _cli(exc):
    @click.command()
    @friendly_errors
    def cmd():
        raise exc

    return cmd


@pytest.mark.parametrize("exc, code", [
    (VaeganError("eps 2 out of range"), EXIT_USAGE),
    (ArtifactError("eps 2 out of range"), EXIT_USAGE),
    (ExportValidationError("eps 2 out of range"), EXIT_FAILED),
])
def test_a_user_error_is_one_line_and_its_exit_code(exc, code):
    assert isinstance(exc, UserError)
    r = CliRunner().invoke(_cli(exc))
    assert (r.exit_code, r.output) == (code, "Error: eps 2 out of range\n")


def test_an_interrupt_exits_130_and_a_bug_keeps_its_traceback():
    r = CliRunner().invoke(_cli(KeyboardInterrupt()))
    assert (r.exit_code, r.output) == (EXIT_INTERRUPTED, "Interrupted.\n")
    r = CliRunner().invoke(_cli(ValueError("a bug")))
    assert r.exit_code == 1 and isinstance(r.exception, ValueError)
