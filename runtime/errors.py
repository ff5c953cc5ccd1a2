"""Runtime errors. The CLI prints these as one line (no traceback) and exits with code 2."""

from vaegan.errors import UserError


class VaeganRuntimeError(UserError):
    """Base class of the runtime's user-facing errors."""


class ArtifactError(VaeganRuntimeError):
    """The artifacts directory is missing, incomplete, corrupt or of an unknown format version."""


class BackendUnavailableError(VaeganRuntimeError):
    """A requested backend or execution provider is not available on this machine."""


class RuntimeUsageError(VaeganRuntimeError):
    """A bad option or input path (not a bad frame: those become error records)."""


class FeedError(VaeganRuntimeError, ValueError):
    """``infer()`` was given inputs whose names, dtypes or shapes do not match the graph."""


class OutputError(VaeganRuntimeError):
    """Writing under ``--out`` failed (disk full, a file-size limit, permissions); the records already written are
    whole."""


class InputError(VaeganRuntimeError, ValueError):
    """Frames given to the API (``Defense``) in a form it does not take: a wrong dtype, rank, shape or channel count,
    an empty batch, or values outside the contract (NaN, inf, out of range). The message says what was expected
    and what came."""
