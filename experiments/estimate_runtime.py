"""Estimate `make experiments`' full-size runtime from a few measured runs at the full model sizes.

    python experiments/estimate_runtime.py [--work DIR]

Trains, at FULL sizes with one seed: a 2-layer trunk of `--trunk-steps` steps, a 150-step CPT
branch from it (dense evals, like experiments 1, 2, 5), an 8-layer trunk and an 8-layer CPT run
(task eval at start and end, like experiment 10), and records each run's wall and CPU seconds (CPU
time over all threads: on a shared host, wall time includes waiting for the cores). Per-step costs
(compile and evals included, so an upper side estimate) are then multiplied by the steps of every
run the full suite trains (counted from suite.FULL and the experiments' plans).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from classic import PEAKS, RATIOS  # noqa: E402
from suite import FULL, Suite  # noqa: E402


def full_plan_steps(s=FULL, seeds: int = 3) -> dict[str, int]:
    """Optimizer steps of every run the full suite trains, by model (2-layer / 8-layer)."""
    cpt = s.cpt_steps
    branches = (len(PEAKS) + len(RATIOS) - 1) * cpt  # exp 1 peaks + exp 2 ratios (0% at 3e-3 is shared)
    union = s.trunk_steps + cpt
    seq = 2 * 3 * s.seq_phase_steps
    n, c, d = cpt, s.ckpt_every, s.decay_steps
    points = sorted({round(n / 3 / c) * c, round(2 * n / 3 / c) * c, n - d})
    recent = cpt + len(points) * d + sum(p + d for p in points) + 2 * cpt  # 7-8 const, decays, separate; 9
    return {"2-layer": seeds * (s.trunk_steps + branches + union + seq + recent),
            "8-layer": seeds * (s.deep_trunk_steps + 2 * cpt)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(HERE / "work-timing"))
    parser.add_argument("--trunk-steps", type=int, default=100)
    args = parser.parse_args()
    import jax

    work = Path(args.work).absolute()
    jax.config.update("jax_compilation_cache_dir", str(work / "jax_cache"))
    size = dataclasses.replace(FULL, trunk_steps=args.trunk_steps, deep_trunk_steps=args.trunk_steps)
    suite = Suite(work, size, seeds=(0,))
    suite.prepare()
    suite.trunk(0)
    suite.branch("cpt branch", 0.0, size.peak, 0)
    deep = suite.trunk(0, deep=True)
    suite.run("deep-all-s0", suite.plan("deep-all-s0", [{
        "name": "cpt-code", "init": deep, "carry": "params", "steps": size.cpt_steps, "mixture": {"code": 1.0},
        "schedule": suite.cosine(size.peak)}], 0, deep=True, **suite.task_eval(True)), "deep cpt")
    runs = {name: r for name, r in suite.used.items()}
    steps = {"trunk-s0": size.trunk_steps, f"cpt-r0-p{size.peak:g}-s0": size.cpt_steps,
             "trunk-deep-s0": size.trunk_steps, "deep-all-s0": size.cpt_steps}
    per_step = {k: runs[k]["cpu_seconds"] / steps[k] for k in steps}
    c2 = max(per_step["trunk-s0"], per_step[f"cpt-r0-p{size.peak:g}-s0"])
    c8 = max(per_step["trunk-deep-s0"], per_step["deep-all-s0"])
    total = full_plan_steps()
    estimate = total["2-layer"] * c2 + total["8-layer"] * c8
    out = {"measured": {k: {"steps": steps[k], "wall_s": runs[k]["seconds"], "cpu_s": runs[k]["cpu_seconds"]}
                        for k in steps},
           "cpu_s_per_step": {"2-layer": c2, "8-layer": c8}, "full_suite_steps": total,
           "full_suite_estimate_min": estimate / 60, "load_average": os.getloadavg()}
    print(json.dumps(out, indent=1))
    (work / "estimate.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
