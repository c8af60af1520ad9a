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


def clip(text: object, limit: int = 200) -> str:
    """The first line of ``text`` in at most ``limit`` characters, cut at a word boundary (never mid-word) and
    marked with an ellipsis: for library messages quoted inside a one-line error."""
    lines = str(text).strip().splitlines()
    line = lines[0].strip() if lines else ""
    if len(line) <= limit:
        return line
    space = line.rfind(" ", 0, limit + 1)  # the words before it fit: line[:space]
    sep = max(line.rfind(c, 0, limit) for c in "/,;")  # after a separator: line[: sep + 1]
    keep = max(space, sep + 1 if sep >= 0 else -1)
    if keep > 0:
        return line[:keep].rstrip() + (" …" if keep == space else "…")
    end = line.find(" ", limit)  # one token longer than the limit (a path): kept whole
    return line if end < 0 else line[:end] + " …"
