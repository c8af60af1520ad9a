"""Errors the user can fix. The CLI prints them as one line and exits with code 2."""


class UsageError(Exception):
    """Bad input from the user (suite file, CLI argument, unknown name)."""


class RunFailed(Exception):
    """A run could not produce a result (non-finite loss, data error, ...); recorded as failed."""


class ArtifactError(UsageError):
    """A results file is unreadable or unsafe (truncated, another format, a planted pickle): named in one line."""


class UnsafeArtifact(ArtifactError):
    """A file that would run code if unpickled: refused, never moved or rebuilt silently."""


class DiskFull(RunFailed):
    """No space left where a result is written: the path and the space needed, in one line."""
