"""Speed-ups of a finished suite timed on an idle machine, then with a second process loading one core.

    snakemake                                             # the smoke suite, once
    python tests/benchmarks/timing_under_load.py          # suites/smoke.yaml, results/, 2 threads

Runs the timing step (`bench time SUITE BACKBONE`) idle, then beside a busy-loop process (one core), then idle
again, and prints every run's paired speed-up from each next to the spread between them; "unpaired" divides a
run's img/s under load by dense's idle img/s, which is what dividing figures from separate evaluate jobs gives.
The suite's timing file is put back as it was. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BUSY = "while True: pass"


def time_once(suite: str, backbone: str, root: str, threads: int, path: Path) -> dict:
    cmd = [sys.executable, "-m", "bench", "time", suite, backbone, "--results", root, "--timing-threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench time failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(path.read_text())


def headline(timing: dict) -> dict[str, dict]:
    from bench.results.timing_columns import headline as head

    return {rid: head(e["sweep"]) for rid, e in timing["runs"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="suites/smoke.yaml")
    p.add_argument("--backbone", default=None, help="default: the suite's first backbone")
    p.add_argument("--results", default="results")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the timing (its timing_threads)")
    args = p.parse_args()
    from bench.config import load_suite
    from bench.timing import timing_path

    suite = load_suite(args.suite)
    backbone = args.backbone or suite.backbones[0].label
    path = timing_path(suite, backbone, args.results)
    original = path.read_bytes() if path.exists() else None
    try:
        idle = time_once(args.suite, backbone, args.results, args.threads, path)
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            loaded = time_once(args.suite, backbone, args.results, args.threads, path)
        finally:
            busy.kill()
            busy.wait()
        idle2 = time_once(args.suite, backbone, args.results, args.threads, path)
    finally:
        if original is not None:
            path.write_bytes(original)
    a, b, c = headline(idle), headline(loaded), headline(idle2)
    ref = idle["reference_run_id"]
    print(
        f"{suite.name} / {backbone} on {idle['device_key']}, batch {a[ref]['batch_size']}, "
        f"{idle['protocol']['rounds']} paired repeats of >= {idle['protocol']['min_time_s']} s"
    )
    print(
        f"dense img/s: idle {a[ref]['img_per_s_median']:.1f} (CV {a[ref]['img_per_s_cv']:.1%}), one core loaded "
        f"{b[ref]['img_per_s_median']:.1f} (CV {b[ref]['img_per_s_cv']:.1%}), idle again "
        f"{c[ref]['img_per_s_median']:.1f}"
    )
    print(
        "| run | speed-up idle [95% CI] | speed-up loaded [95% CI] | loaded / idle | idle again / idle | "
        "unpaired (loaded img/s / idle dense img/s) | attempts idle/loaded |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for rid in sorted(a):
        if rid == ref:
            continue
        x, y, z = a[rid], b[rid], c[rid]
        drift = y["speedup"] / x["speedup"]
        worst = max(worst, abs(drift - 1))
        mark = lambda r: " †" if r["speedup_unreliable"] else ""  # noqa: E731
        print(
            f"| {rid} | {x['speedup']:.3f} [{x['speedup_ci_low']:.3f}, {x['speedup_ci_high']:.3f}]{mark(x)} | "
            f"{y['speedup']:.3f} [{y['speedup_ci_low']:.3f}, {y['speedup_ci_high']:.3f}]{mark(y)} | {drift:.3f} | "
            f"{z['speedup'] / x['speedup']:.3f} | {y['img_per_s_median'] / a[ref]['img_per_s_median']:.3f} | "
            f"{x['attempts']}/{y['attempts']} |"
        )
    print(f"largest change of a speed-up under load: {100 * worst:.1f} %")


if __name__ == "__main__":
    main()
