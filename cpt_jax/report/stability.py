"""The stability gap: right after a phase starts, held-out loss often rises before it falls
(De Lange et al., 2023). Per phase and source: the worst loss after the phase start, its step,
and the first step where the loss is back at or below its phase-start value."""

from __future__ import annotations

from dataclasses import dataclass

from cpt_jax.report.runs import RunRecord


@dataclass(frozen=True)
class Gap:
    phase: str
    source: str
    start_step: int
    start_loss: float
    worst_step: int
    worst_loss: float
    recovered_step: int | None  # None: still above the phase-start loss at the last eval

    @property
    def gap(self) -> float:
        return self.worst_loss - self.start_loss


def stability_gaps(run: RunRecord) -> list[Gap]:
    """One Gap per (phase, source) with an eval after the phase-start eval, in plan order.
    recovered_step: the first eval at or after the worst one whose loss is <= the start loss."""
    out = []
    for index, phase in enumerate(run.config.phases):
        rows = [r for r in run.evals if r.get("phase") == index]
        for source in sorted({r["source"] for r in rows}):
            curve = sorted((r["step"], r["loss"]) for r in rows if r["source"] == source)
            if len(curve) < 2:
                continue
            (start_step, start_loss), after = curve[0], curve[1:]
            worst_step, worst_loss = max(after, key=lambda p: (p[1], -p[0]))
            recovered = next((s for s, loss in after if s >= worst_step and loss <= start_loss), None)
            out.append(Gap(phase.name, source, start_step, start_loss, worst_step, worst_loss, recovered))
    return out


def stability_table(runs: list[RunRecord]) -> str:
    lines = ["| run | phase | source | start step | start loss | worst loss | worst step | gap | recovered at |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for g in stability_gaps(run):
            recovered = str(g.recovered_step) if g.recovered_step is not None else "not recovered"
            lines.append(f"| {run.label} | {g.phase} | {g.source} | {g.start_step} | {g.start_loss:.4f} | "
                         f"{g.worst_loss:.4f} | {g.worst_step} | {g.gap:+.4f} | {recovered} |")
    return "\n".join(lines) + "\n"
