"""Fit a mixture law to a replay-ratio sweep and recommend the smallest replay ratio within a forgetting budget.

Each RUN is one point of the sweep: the replay ratio of its last phase (or --phase) and the held-out
losses at that phase's start and end. The law per source is L(x) = E + C / (x + 0.01)^gamma of its
data share x (D-CPT / CMR family); the stated error is the fit's leave-one-ratio-out error.
"""

from __future__ import annotations

import argparse
import json

from cpt_jax.storage import as_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories of the sweep (one ratio each; seeds repeat)")
    parser.add_argument("--replay", required=True, help="the replayed (old) source, e.g. prose")
    parser.add_argument("--budget", type=float, default=0.1, help="allowed rise of the replayed source's held-out loss")
    parser.add_argument("--holdout", type=float, default=None, help="replay ratio left out of the fit and predicted")
    parser.add_argument("--phase", type=int, default=-1, help="phase index whose mixture is the sweep (default: last)")
    parser.add_argument("--json", default=None, help="also write the fit to this JSON file")
    parser.add_argument("--plot", default=None, metavar="OUT.png", help="draw the runs and the fitted laws")


def run(args: argparse.Namespace) -> int:
    from cpt_jax.report import load_run
    from cpt_jax.report.mixture_law import fit_mixture, fit_to_dict, format_fit, plot_fit

    fit = fit_mixture([load_run(r) for r in args.runs], args.replay, holdout=args.holdout, budget=args.budget,
                      phase=args.phase)
    print(format_fit(fit))
    if args.json:
        as_path(args.json).write_text(json.dumps(fit_to_dict(fit), indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        plot_fit(fit, args.plot)
        print(f"wrote {args.plot}")
    return 0
