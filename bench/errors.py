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
    head = line[: limit - 1]
    cut = max(head.rfind(" "), head.rfind("/"), head.rfind(","), head.rfind(";"))
    if cut > 0:  # after a separator, or before a space: the last word stays whole
        return head[: cut + 1].rstrip() + ("…" if head[cut] != " " else " …")
    end = line.find(" ", limit)  # one token longer than the limit (a path): kept whole
    return line if end < 0 else line[:end] + " …"
