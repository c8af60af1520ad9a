"""Is a result file whole, and who may write a run's folder.

Every file the harness writes is written atomically (``bench.io``), so a crash never leaves half of one; a
file can still be damaged afterwards (a truncated copy, a full disk on another tool's write, a planted
file). ``problem`` says in one line what is wrong with one, cheaply enough to check every artifact of a
suite each time Snakemake parses the Snakefile: a torch checkpoint's zip directory (at the end of the file,
so any truncation loses it), a JSON record's parse and run id, a parquet footer. ``quarantine`` moves a
damaged file aside so that the pipeline rebuilds exactly it and what depends on it.

``StepLock`` gives each run (and pretrain) folder one writer: a second ``bench train``/``evaluate`` of the
same folder waits for the first (a restarted Snakemake beside jobs its killed predecessor left running),
then finds the result there and stops.

Torch-free: Snakemake imports this at parse time.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
import zipfile
from pathlib import Path
from typing import IO, Any

from bench.errors import UnsafeArtifact, clip
from bench.io import check_no_link, open_artifact, open_nofollow, safe_mkdir

CORRUPT_SUFFIX = ".corrupt"
LOCK_FILE = ".writer.lock"


def problem(path: str | os.PathLike, run_id: str | None = None) -> str | None:
    """Why ``path`` (an existing harness artifact) is unreadable, or None when it is whole. A planted link (inside
    results) is not a damaged file to move aside but :class:`UnsafeArtifact`, raised."""
    path = Path(path)
    try:
        if path.suffix == ".pth":
            with open_artifact(path) as f, zipfile.ZipFile(f) as z:
                names = z.namelist()
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
                return "not a torch checkpoint (no data.pkl in the archive)"
        elif path.suffix == ".json":
            with open_artifact(path, "r", encoding="utf-8") as f:
                record = json.loads(f.read())
            if not isinstance(record, dict) or "status" not in record:
                return "not a run record (no status)"
            if run_id is not None and record.get("run_id") != run_id:
                return f"the record of another run ({record.get('run_id')!r})"
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            with open_artifact(path) as f:
                pq.read_metadata(f)
    except UnsafeArtifact:
        raise
    except (zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"truncated or corrupt ({type(e).__name__}: {clip(e, 120)})"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    except Exception as e:  # noqa: BLE001 - pyarrow's errors: a truncated footer
        return f"truncated or corrupt ({type(e).__name__}: {clip(e, 120)})"
    return None


def quarantine(path: str | os.PathLike, reason: str) -> Path:
    """Move a damaged artifact aside (kept for a post-mortem, one copy), so that it is rebuilt."""
    path = Path(path)
    aside = path.with_name(path.name + CORRUPT_SUFFIX)
    check_no_link(path)  # the file itself may not be a link either: a planted one is refused, never moved
    os.replace(path, aside)
    print(
        f"tokenbench: {path} is {reason}; moved to {aside.name}, rebuilding it and what depends on it",
        file=sys.stderr,
        flush=True,
    )
    return aside


def quarantine_damaged(paths: list[tuple[Path, str | None]]) -> list[Path]:
    """Check each existing (path, expected run id) and move the damaged ones aside; returns those moved."""
    moved = []
    for path, run_id in paths:
        if os.path.lexists(path):  # a planted link is refused by problem(), not skipped
            reason = problem(path, run_id)
            if reason:
                moved.append(quarantine(path, reason))
    return moved


class StepLock:
    """An exclusive ``flock`` on ``folder/.writer.lock`` for as long as a step writes the folder.

    The kernel releases it when the holder exits, however it dies (kill -9 included), so a stale lock never
    blocks. The file names the holder (host, pid, command) for the waiting side's message. flock is honoured
    across hosts on NFSv4 and Lustre/GPFS mounted with flock; elsewhere it is per host.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        what: str,
        *,
        poll_s: float = 2.0,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    ):
        self.folder, self.what, self.poll_s, self.log = Path(folder), what, poll_s, log
        self._f: IO[str] | None = None

    def __enter__(self) -> StepLock:
        # no link followed (folder or lock file: UnsafeArtifact); created with the group's mode so that co-users
        # can take it too, never chmodded (a chmod of a planted file would widen someone else's)
        safe_mkdir(self.folder)
        path = self.folder / LOCK_FILE
        try:
            f = os.fdopen(open_nofollow(path, os.O_RDWR | os.O_CREAT), "r+")
        except PermissionError:  # another user's lock file in a shared folder: flock works on a read-only fd
            f = os.fdopen(open_nofollow(path), "r")
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    self.log(
                        f"bench: {self.what}: {self.folder} is being written by another process "
                        f"({_holder(f)}); waiting for it to finish"
                    )
                    told = True
                time.sleep(self.poll_s)
        if f.writable():
            f.seek(0)
            f.truncate()
            f.write(
                json.dumps(
                    {
                        "host": socket.gethostname(),
                        "pid": os.getpid(),
                        "argv": sys.argv[1:6],
                        "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    }
                )
                + "\n"
            )
            f.flush()
        self._f = f
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None


def _holder(f: IO[str]) -> str:
    try:
        f.seek(0)
        info = json.loads(f.read() or "{}")
        return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"
    except (ValueError, OSError):
        return "unknown holder"
