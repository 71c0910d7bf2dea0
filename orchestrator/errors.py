"""One family for every error the CLI reports: a few clear lines and an exit code, never a traceback.

Input errors are located the same way everywhere (`FILE:LINE: field: message`, see `located`), so an
editor or CI can jump to the line; errors from a target (Slurm refused the request, the cluster
cannot be reached, the CRD is not installed) say what is wrong and how to fix it.
"""

from __future__ import annotations

EXIT_FAILED = 1  # the job, or an operation on it, failed
EXIT_BAD_INPUT = 2  # the input or the environment must be fixed first; nothing was done


class ShardctlError(Exception):
    """Base of every error shown to the user as lines rather than a traceback."""

    exit_code = EXIT_BAD_INPUT

    def lines(self) -> list[str]:
        return str(self).splitlines() or [type(self).__name__]


class TargetError(ShardctlError):
    """A target refused a request or could not be reached; the message is the target's own words plus a fix."""


class SubmitError(TargetError):
    """The target refused the request (a bad partition, an impossible GPU count, an invalid object)."""


class StoreError(ShardctlError):
    """The job store has no such job, or cannot be read or written."""


def located(source: str | None, line: int | None, field: str | None, message: str) -> str:
    """`FILE:LINE: field: message`, leaving out what is unknown: the one format of a located error."""
    where = f"{source}:{line}" if source and line else (source or "")
    parts = [p for p in (where, field) if p]
    return ": ".join([*parts, message])
