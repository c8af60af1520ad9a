"""Per-job dispatch overhead of bench.launch beyond SLURM's own scheduling (a benchmark, not a test).

    python tests/benchmarks/dispatch_overhead.py --jobs 5 --partition debug

What the launcher adds on top of SLURM: from its start until the job is submitted (Python start,
submitit pickling, sbatch) plus from the job's result file being written until the launcher exits
(noticing the end). SLURM's own Submit/Start/End (1 s resolution) are printed for context.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path


def sacct_times(job_id: str) -> tuple[datetime, datetime, datetime]:
    for _ in range(60):  # accounting lags the job's end by a moment
        out = (
            subprocess.run(
                ["sacct", "-n", "-X", "-P", "-o", "Submit,Start,End", "-j", job_id],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.split("\n")[0]
            .split("|")
        )
        if "Unknown" not in out and len(out) == 3:
            return tuple(datetime.fromisoformat(t) for t in out)  # type: ignore[return-value]
        time.sleep(0.5)
    raise SystemExit(f"sacct never reported the end of job {job_id}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--partition", default="")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.jobs):
            folder = Path(tmp) / str(i)
            cmd = [
                sys.executable,
                "-m",
                "bench.launch",
                "--launcher",
                "slurm",
                "--folder",
                str(folder),
                "--name",
                f"tb.overhead.{i}",
                "--cpus",
                "1",
                "--partition",
                args.partition,
                "--",
                "ls",
                "suites",
            ]
            t0 = time.time()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not (folder / "launch.json").exists() and proc.poll() is None:
                time.sleep(0.01)
            t_submitted = time.time()
            if proc.wait() != 0:
                raise SystemExit(f"job {i} failed")
            t_end = time.time()
            launched = json.loads((folder / "launch.json").read_text())
            job_id = launched["job_id"]
            result = next(Path(launched["job_folder"]).glob(f"{job_id}_*_result.pkl"))  # the private job folder
            submit_s, notice_s = t_submitted - t0, t_end - result.stat().st_mtime
            submit, start, end = sacct_times(job_id)
            rows.append((submit_s, notice_s))
            print(
                f"job {job_id}: launcher {t_end - t0:.1f}s; submitted after {submit_s:.2f}s, exited "
                f"{notice_s:.2f}s after the result; SLURM: queued {(start - submit).total_seconds():.0f}s, "
                f"ran {(end - start).total_seconds():.0f}s",
                flush=True,
            )
    overhead = [a + b for a, b in rows]
    print(
        f"dispatch overhead beyond SLURM scheduling: median {statistics.median(overhead):.1f}s "
        f"(min {min(overhead):.1f}s, max {max(overhead):.1f}s) over {len(rows)} jobs"
    )


if __name__ == "__main__":
    main()
