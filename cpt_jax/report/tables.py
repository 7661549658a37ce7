"""Markdown tables of held-out loss per domain at the start and end of every phase."""

from __future__ import annotations

from cpt_jax.report.runs import RunRecord


def phase_table(runs: list[RunRecord]) -> str:
    """Rows: run, phase, point (start/end); columns: each source's held-out loss."""
    sources = sorted({s for run in runs for s in run.sources})
    lines = ["| run | phase | point | step | " + " | ".join(sources) + " |",
             "|---|---|---|---|" + "---|" * len(sources)]
    for run in runs:
        for index, phase in enumerate(run.config.phases):
            rows = [r for r in run.evals if r["phase"] == index]
            if not rows:
                continue
            for point, step in (("start", min(r["step"] for r in rows)), ("end", max(r["step"] for r in rows))):
                at = {r["source"]: r["loss"] for r in rows if r["step"] == step}
                cells = " | ".join(f"{at[s]:.4f}" if s in at else "-" for s in sources)
                lines.append(f"| {run.label} | {phase.name} | {point} | {step} | {cells} |")
    return "\n".join(lines) + "\n"


def data_table(runs: list[RunRecord]) -> str:
    """Per run and phase: each source's requested share, the share of rows it really got, and the
    epochs of it seen by the phase's end (repetition hurts: a small replay set can be seen often)."""
    lines = ["| run | phase | source | requested | realised | epochs seen |", "|---|---|---|---|---|---|"]
    for run in runs:
        for index, phase in enumerate(run.config.phases):
            rows = [r for r in run.train if r.get("phase") == index and any(k.startswith("share/") for k in r)]
            if not rows:
                continue
            last, total = rows[-1], sum(phase.mixture.values())
            for source in sorted(k[6:] for k in last if k.startswith("share/")):
                asked = phase.mixture.get(source, 0.0) / total
                lines.append(f"| {run.label} | {phase.name} | {source} | {asked:.2%} | {last[f'share/{source}']:.2%} | "
                             f"{last.get(f'epochs/{source}', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"
