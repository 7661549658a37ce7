"""Print a plan's learning-rate key points (peaks, boundaries, final LR) and plot it to PNG, and
the tokens and epochs each source will give per phase (warning past data.max_epochs_warning).

Reads the same run config as `cpt-jax train` (with the same key.sub=value overrides), so what
it shows is the schedule training will use: lr(global step), continuous across resume.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run/plan YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values, e.g. phases.1.schedule.peak_lr=1e-4")
    parser.add_argument("--plot", metavar="OUT.png", default=None,
                        help="also draw the LR over steps (tokens on the top axis) to this PNG")


def format_table(points: list[dict]) -> str:
    header = ("phase", "step", "tokens", "lr", "what")
    rows = [(p["phase"], str(p["step"]), f"{p['tokens']:,}" if "tokens" in p else "-", f"{p['lr']:.4e}", p["what"])
            for p in points]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    align = ["<", ">", ">", ">", "<"]
    lines = ["  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from cpt_jax.train.config import load_run_config
    from cpt_jax.schedules import key_points, plan_phases

    cfg = load_run_config(args.config, args.overrides)
    phases = [(p.name, p.schedule, n) for p, n in zip(cfg.phases, cfg.phase_steps())]
    plan_phases(phases)  # budget-dependent checks first: a bad plan fails before anything is drawn
    total = sum(n for _, _, n in phases)
    per_step = cfg.phase_tokens_per_step()  # each phase's batch x row length
    tokens = sum(n * t for (_, _, n), t in zip(phases, per_step))
    each = f"{per_step[0]:,} per step" if len(set(per_step)) == 1 else \
        "per step: " + ", ".join(f"{p.name} {t:,}" for p, t in zip(cfg.phases, per_step))
    print(f"{len(phases)} phase(s), {total:,} steps, {tokens:,} tokens ({each})")
    print(format_table(key_points(phases, per_step)))
    from cpt_jax.data.forecast import forecast, format_forecast

    print("data per phase (epochs: times each source is read, over the run so far)")
    print(format_forecast(forecast(cfg.data, [(p.name, p.mixture, n) for p, n in zip(cfg.phases, cfg.phase_steps())])))
    if args.plot:
        from cpt_jax.errors import UserError
        from cpt_jax.schedules.plot import plot_plan

        try:
            out = plot_plan(phases, args.plot, cfg.tokens_per_step, title=f"LR schedule: {args.config}")
        except OSError as e:
            raise UserError(f"cannot write the plot to {args.plot}: {e}; pick a writable path") from e
        print(f"wrote {out}", file=sys.stderr)
    return 0
