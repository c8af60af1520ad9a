"""A step's output: already done, restorable, or to be made, by one writer at a time.

A compute step (pretrain, fine-tune, evaluate) is keyed by what defines its result: the run's spec (the
Snakefile's rerun trigger) and the identity (size, mtime) of the files it reads. After a success its output is
hard-linked into ``.kept/`` with that key. So:

- a second writer of the same folder (a Snakemake restarted beside jobs its killed predecessor left running,
  or a second pipeline on the same results) waits for the first and then finds the result: nothing trains
  twice;
- a result finished while Snakemake was down, which the restarted Snakemake deletes as incomplete before it
  runs the step again, is put back from ``.kept/`` instead of being recomputed (its key still matches);
- a result made for another spec or from other inputs never matches, and is made anew.

Torch-free. Only single-process steps take the lock: a multi-task job's ranks cannot agree on waiting before
their process group exists, and the launcher re-attaches to such jobs instead (``bench.launch``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.artifacts import StepLock, problem
from bench.io import check_no_link, read_text, safe_mkdir, safe_unlink

KEPT_DIR = ".kept"


def step_key(spec: dict[str, Any], inputs: list[Path]) -> str:
    h = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode())
    for p in inputs:
        st = os.stat(p) if os.path.exists(p) else None
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode() if st else f"{p.name}:-".encode())
    return h.hexdigest()[:32]


def multi_process() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    if "SUBMITIT_EXECUTOR" in os.environ or "SLURM_JOB_ID" in os.environ:
        try:
            import submitit

            return submitit.JobEnvironment().num_tasks > 1
        except Exception:  # noqa: BLE001 - not inside a submitit job
            return False
    return False


class StepOutput:
    def __init__(self, output: Path, key: str, run_id: str | None = None):
        self.output, self.key, self.run_id = Path(output), key, run_id
        self.kept = self.output.parent / KEPT_DIR / self.output.name
        self.kept_key = self.kept.with_name(self.kept.name + ".key")

    def valid(self, path: Path | None = None) -> bool:
        path = check_no_link(path or self.output)  # a link there is refused, never read as a result
        return path.is_file() and problem(path, self.run_id if path.suffix == ".json" else None) is None

    def _key_of_kept(self) -> str | None:
        try:
            return read_text(self.kept_key).strip()  # a planted link: UnsafeArtifact, not "no key"
        except (OSError, UnicodeDecodeError):
            return None

    def matches(self) -> bool:
        """The output is whole and was made by this very step (same spec, same inputs)."""
        return (
            self.valid()
            and self.valid(self.kept)
            and self._key_of_kept() == self.key
            and os.path.samefile(self.output, self.kept)
        )

    def restore(self) -> bool:
        """Put back the kept output of this step (deleted by a restarted Snakemake as incomplete)."""
        if self.output.exists() or self._key_of_kept() != self.key or not self.valid(self.kept):
            return False
        tmp = self.output.with_name(f".{self.output.name}.restore")
        safe_unlink(tmp)
        os.link(check_no_link(self.kept), tmp, follow_symlinks=False)  # valid() refused a link already
        check_no_link(self.output)
        os.replace(tmp, self.output)
        return True

    def keep(self, source: str | os.PathLike | None = None) -> None:
        """The finished output (``source``: its temporary name, before it takes the output's) and its key into
        .kept/: a hard link, no second copy on disk."""
        from bench.io import atomic_write_text

        check_no_link(self.kept)  # .kept/ or the kept file planted as a link: refused
        if source is None and os.path.exists(self.kept) and os.path.samefile(self.kept, self.output):
            return
        safe_mkdir(self.kept.parent)
        tmp = self.kept.with_name(f".{self.kept.name}.tmp")
        safe_unlink(tmp)
        try:
            os.link(check_no_link(source or self.output), tmp, follow_symlinks=False)
        except OSError:  # no hard links here: nothing kept, a deleted output is then recomputed
            return
        os.replace(tmp, self.kept)
        atomic_write_text(self.kept_key, self.key + "\n")

    def forget(self) -> None:
        """Before the step is made anew: a kept result of another spec must never be restored for this one, and
        the output it kept goes with it (left in place, a kill before the new one is whole would leave another
        spec's result that the next attempt takes as "exists")."""
        stale = (
            self._key_of_kept() not in (None, self.key)
            and os.path.isfile(self.output)
            and os.path.isfile(self.kept)
            and os.path.samefile(self.output, self.kept)
        )
        safe_unlink(self.kept_key)
        safe_unlink(self.kept)
        if stale:
            safe_unlink(self.output)


@contextmanager
def single_writer(folder: Path, what: str, log: Callable[[str], None] | None = None) -> Iterator[None]:
    if multi_process():
        yield
        return
    with StepLock(folder, what, **({"log": log} if log else {})):
        yield


ATTEMPTS = "attempts.jsonl"


def note_attempt(out: StepOutput, outcome: str) -> None:
    """One line per attempt at a step (made, already done, restored, failed) in ``.kept/attempts.jsonl``: how
    often a result was computed, for the record and for the fault tests."""
    import socket
    import time

    from bench.errors import DiskFull
    from bench.io import atomic_write_text

    path = out.kept.parent / ATTEMPTS
    line = json.dumps(
        {
            "output": out.output.name,
            "outcome": outcome,
            "key": out.key,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    try:
        safe_mkdir(path.parent)  # a planted link (.kept/ or the log): UnsafeArtifact, raised, never followed
        old = read_text(path) if os.path.lexists(path) else ""
        atomic_write_text(path, old + line + "\n")
    except (OSError, UnicodeDecodeError, DiskFull):  # a note, never the reason a step fails (a full disk is
        pass  # reported by the step)


def run_step(
    out: StepOutput,
    what: str,
    make: Callable[[], Any],
    *,
    force: bool = False,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> Any:
    """``make()`` unless this step's output is already there (or restorable); returns None when skipped."""
    single = not multi_process()
    with single_writer(out.output.parent, what, log):
        if not force:
            skip = None
            if out.matches():
                skip, msg = "already done", f"already done ({out.output}); --force redoes it"
            elif out.restore():
                skip, msg = (
                    "restored",
                    f"restored {out.output}, which an earlier attempt finished (kept in {KEPT_DIR}/)",
                )
            elif out.valid() and not out.kept_key.exists():
                skip, msg = "exists", f"{out.output} exists; --force redoes it"
            if skip:
                log(f"bench: {what}: {msg}")
                if single:
                    note_attempt(out, skip)
                return None
        from bench.io import ON_COMPLETE

        if single:
            if not force:
                out.forget()
            ON_COMPLETE[os.path.abspath(out.output)] = out.keep  # kept the moment it is whole, not after
        try:
            result = make()
        except BaseException:
            if single:
                note_attempt(out, "failed")
            raise
        finally:
            ON_COMPLETE.pop(os.path.abspath(out.output), None)
        if out.valid() and single:
            out.keep()
            note_attempt(out, "made")
        return result
