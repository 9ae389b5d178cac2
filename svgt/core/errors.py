"""Every error svgt raises on purpose derives from ``SvgtError``; its category says what the caller can do.

    BadInput            the input cannot be used (a file, row, key, option or request field: the message names it)
    VerificationFailed  an artifact does not match what was recorded (checksum, backbone hash, format)
    StepFailed          a step ran and its result says the pipeline must stop (e.g. the data failed validation)
    UsageError          the command line asks for something that cannot be done
    GatesFailed         the module was evaluated but misses a quality gate, so it was not registered
    Transient           a failure that a later try may not meet (a connection, a Ray Train run that died)

``exit_code`` is what `svgt` exits with (documented in `svgt --help`); ``is_transient`` in ``svgt.core.retry`` is
the one rule, for the CLI and the Prefect tasks alike, of whether a retry can help.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GATES_FAILED = 0, 1, 2, 3
EXIT_TRANSIENT = 75  # EX_TEMPFAIL from sysexits.h, which schedulers read as "try again"


class SvgtError(Exception):
    """Base of the errors svgt raises on purpose."""

    exit_code = EXIT_FAILED


class BadInput(SvgtError, ValueError):
    """Input that cannot be used; the message names the file, row, key or field."""


class VerificationFailed(SvgtError):
    """An artifact whose bytes, hash or format differ from what was recorded (tampered, partial or foreign)."""


class StepFailed(SvgtError):
    """A step ran but its result says the pipeline must stop (e.g. validation failed)."""


class UsageError(StepFailed):
    """The command line asks for something that cannot be done (conflicting or missing options)."""

    exit_code = EXIT_USAGE


class GatesFailed(StepFailed):
    """The evaluated module misses at least one quality gate, so it was not registered."""

    exit_code = EXIT_GATES_FAILED


class Transient(SvgtError):
    """A failure that may not happen again: retrying the step can help."""

    exit_code = EXIT_TRANSIENT
