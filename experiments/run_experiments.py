"""`make experiments`: reproduce ten continual pre-training findings at small scale on CPU and judge
each by seed-paired 95% intervals. Writes experiments/RESULTS.md (full size) or
experiments/RESULTS-quick.md (--quick) and their plots.

    python experiments/run_experiments.py                 # the full suite (under two hours on 2 cores)
    python experiments/run_experiments.py --quick         # a smoke run of the same code (minutes)
    python experiments/run_experiments.py --only 7 8      # some experiments (cached runs are reused)
    python experiments/run_experiments.py --jobs 1        # one process (the default, 2, trains in two)

Every run is a plan (WORK/plans/*.yaml, rerunnable with `cpt-jax train`) trained by the library
itself. Each of three seeds has its own trunk (init and data order); branches start from their
seed's trunk checkpoint (`init: ckpt:TRUNK@STEP`). A run is reused only when its plan, the cpt_jax
source and its parents are unchanged (cache.py). Modules: suite.py (data, plans, runs, cache),
stats.py (intervals and verdicts), classic.py (experiments 1-6), recent.py (7-10), report.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import classic  # noqa: E402
import recent  # noqa: E402
import report  # noqa: E402
from suite import FULL, QUICK, Suite  # noqa: E402

EXPERIMENTS = {"1": classic.exp1_rewarm, "2": classic.exp2_replay, "3": classic.exp3_union,
               "4": classic.exp4_schedules, "5": classic.exp5_gap, "6": classic.exp6_fit, "7": recent.exp7_merge,
               "8": recent.exp8_path_switching, "9": recent.exp9_injection, "10": recent.exp10_freeze}
NEEDS_REPLAY = ("3", "6")  # they analyse experiment 2's runs
# One training process keeps one core busy (tiny models: XLA:CPU runs each op on one thread), so
# `--jobs 2` trains these two groups in two worker processes; they share only the 2-layer trunks
# (Suite._lock makes one wait for the other), and the deep group (8-layer model) goes first in its
# worker so that the trunks exist when 9, 8 and 7 need them.
GROUPS = (("1", "2", "3", "4", "5", "6"), ("10", "9", "8", "7"))


def train_in_workers(argv: list[str], keys: list[str]) -> None:
    """Train every run `keys` need in len(GROUPS) worker processes (this script with `--only` a
    group and `--jobs 1`, no report); the caller then finds them all cached."""
    strip, rest = {"--only", "--jobs", "--out"}, []
    skip = False
    for a in argv:  # the caller's options but --only/--jobs/--out and their values
        if a.startswith("--"):
            skip = a.split("=")[0] in strip
        if not skip:
            rest.append(a)
    workers = []
    for group in GROUPS:
        only = [k for k in group if k in keys]
        if only:
            cmd = [sys.executable, __file__, *rest, "--jobs", "1", "--no-report", "--only", *only]
            workers.append((only, subprocess.Popen(cmd)))
    failed = [only for only, w in workers if w.wait() != 0]
    if failed:
        raise SystemExit(f"[experiments] the worker training {failed} failed (its output is above); rerun: "
                         f"finished runs are cached")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the suite")
    parser.add_argument("--work", default=None, help="runs and data (default: experiments/work, or work-quick)")
    parser.add_argument("--out", default=None, help="the report (default: experiments/RESULTS.md, or RESULTS-quick.md)")
    parser.add_argument("--only", nargs="*", default=None, choices=list(EXPERIMENTS), help="experiments to run")
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2),
                        help="training processes (2: one per core, see GROUPS)")
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # a --jobs worker
    args = parser.parse_args(argv)
    work = Path(args.work or HERE / ("work-quick" if args.quick else "work")).absolute()
    out = Path(args.out or HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")).absolute()
    plots = out.parent / ("plots-quick" if args.quick else "plots")

    import jax

    jax.config.update("jax_compilation_cache_dir", str(work / "jax_cache"))  # identical runs of other seeds
    suite = Suite(work, QUICK if args.quick else FULL)
    t0 = time.perf_counter()
    suite.prepare()
    keys = args.only or list(EXPERIMENTS)
    if args.jobs > 1:
        train_in_workers(argv, keys)
    results, replay = {}, None
    for key in keys:
        before = sum(suite.timings.values())
        if key in NEEDS_REPLAY:
            if replay is None:
                replay = classic.exp2_replay(suite)["runs"]
            res = EXPERIMENTS[key](suite, replay)
        else:
            res = EXPERIMENTS[key](suite)
            replay = res.pop("runs", replay)
        res["runtime"] = sum(suite.timings.values()) - before
        results[key] = res
        print(f"[experiments] {key}: {res['verdict']}", flush=True)
    if args.no_report:
        return 0
    report.write(suite, dict(sorted(results.items(), key=lambda kv: int(kv[0]))), out, plots, argv,
                 time.perf_counter() - t0, args.quick)
    print(f"[experiments] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
