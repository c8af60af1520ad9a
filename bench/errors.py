"""Errors the user can fix. The CLI prints them as one line and exits with code 2."""

import re


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


#: a quoted value longer than this is described by its length in a one-line message, never printed whole
LONG_VALUE = 160
_QUOTED = re.compile(rf"'[^'\n]{{{LONG_VALUE},}}'|\"[^\"\n]{{{LONG_VALUE},}}\"")


def one_line(message: object) -> str:
    """``message`` as one short line: its lines joined, and each quoted value longer than LONG_VALUE characters (a
    3000-character name, a 100 kB scalar) replaced by its length; the rest of the message is kept word for word."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return _QUOTED.sub(lambda m: f"<a value of {len(m.group(0)) - 2:,} characters>", text)
