"""Per-job dispatch overhead of bench.launch beyond SLURM's own scheduling (a benchmark, not a test).

    python tests/benchmarks/dispatch_overhead.py --jobs 5 --partition debug

For each job: launcher wall time minus (End - Submit) as sacct reports it, i.e. what our launcher adds
(Python start, submitit pickling and sbatch call, noticing the end) on top of queueing and running.
SLURM's times have 1 s resolution, so each figure is +-1 s; the median over jobs is what to quote.
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
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "Submit,Start,End", "-j", job_id],
                         capture_output=True, text=True, check=True).stdout.split("\n")[0].split("|")
    return tuple(datetime.fromisoformat(t) for t in out)  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--partition", default="")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.jobs):
            folder = Path(tmp) / str(i)
            cmd = [sys.executable, "-m", "bench.launch", "--launcher", "slurm", "--folder", str(folder),
                   "--name", f"tb.overhead.{i}", "--cpus", "1", "--partition", args.partition, "--", "ls", "suites"]
            t0 = time.time()
            subprocess.run(cmd, check=True, capture_output=True)
            wall = time.time() - t0
            job_id = json.loads((folder / "launch.json").read_text())["job_id"]
            submit, start, end = sacct_times(job_id)
            rows.append((wall, (start - submit).total_seconds(), (end - start).total_seconds()))
            print(f"job {job_id}: launcher {wall:.1f}s = queue {rows[-1][1]:.0f}s + run {rows[-1][2]:.0f}s "
                  f"+ overhead {wall - rows[-1][1] - rows[-1][2]:.1f}s", flush=True)
    overhead = [w - q - r for w, q, r in rows]
    print(f"dispatch overhead beyond SLURM scheduling: median {statistics.median(overhead):.1f}s "
          f"(min {min(overhead):.1f}s, max {max(overhead):.1f}s) over {len(rows)} jobs")


if __name__ == "__main__":
    main()
