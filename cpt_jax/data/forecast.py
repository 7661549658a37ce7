"""Repetition forecast: tokens and epochs each source will have given after every phase of a plan.

Everything the pipeline reads is a pure function of the plan (see mixture.py and pipeline.py),
so this is arithmetic on the mixture plans and the sources' token counts, known before any run:
prepared sources from their manifests (nothing else is opened), synthetic ones from their
generator. A source whose data does not exist yet is listed without epochs. Epochs are counted
over the whole run (the streams continue across phases); a source past data.max_epochs_warning
gets a warning, since repeated data is worth less than new data and can hurt.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from cpt_jax.data.config import DataConfig, SourceConfig
from cpt_jax.data.manifest import read_manifest
from cpt_jax.data.mixture import plan_mixture
from cpt_jax.data.synthetic import SyntheticDocs
from cpt_jax.errors import DataError


def epoch_tokens(cfg: SourceConfig) -> int | None:
    """Training tokens in one epoch of a source, or None when it is not prepared yet."""
    if cfg.kind == "synthetic":  # document lengths do not depend on the vocabulary
        return int(SyntheticDocs(max(cfg.vocab_size, 8), cfg.num_docs, cfg.min_len, cfg.max_len, cfg.seed,
                                 "train").lengths.sum())
    try:
        return int(read_manifest(cfg.path)["splits"]["train"]["tokens"])
    except DataError:
        return None


def forecast(cfg: DataConfig, phases: Sequence[tuple[str, Mapping[str, float], int]]) -> dict:
    """{'rows': [{phase, source, share, tokens (this phase), total_tokens, epochs (run so far)}],
    'warnings': [...]} for phases given as (name, mixture, steps)."""
    sizes = {n: epoch_tokens(s) for n, s in cfg.sources.items()}
    total = {n: 0 for n in cfg.sources}
    rows, warnings = [], []
    for name, mixture, steps in phases:
        plan = plan_mixture(mixture, cfg.global_batch_size, cfg.sources)
        for source, count in zip(plan.names, plan.cumulative(steps)):
            tokens = count * cfg.seq_len
            total[source] += tokens
            size = sizes[source]
            epochs = total[source] / size if size else None
            rows.append({"phase": name, "source": source, "share": plan.realised(steps)[source] if steps else 0.0,
                         "tokens": tokens, "total_tokens": total[source], "epochs": epochs})
            if epochs is not None and epochs > cfg.max_epochs_warning:
                warnings.append(f"source '{source}' is repeated {epochs:.1f} times by the end of phase '{name}' "
                                f"(more than data.max_epochs_warning={cfg.max_epochs_warning:g}): add data, "
                                "lower its weight or the steps, or raise the threshold if that is intended")
    missing = sorted(n for n, s in sizes.items() if s is None and any(r["source"] == n for r in rows))
    notes = [f"source '{n}' is not prepared yet ({cfg.sources[n].path}): its epochs are unknown" for n in missing]
    return {"rows": rows, "warnings": warnings, "notes": notes}


def format_forecast(result: dict) -> str:
    header = ("phase", "source", "share", "tokens", "epochs")
    rows = [(r["phase"], r["source"], f"{100 * r['share']:.2f}%", f"{r['tokens']:,}",
             "?" if r["epochs"] is None else f"{r['epochs']:.2f}") for r in result["rows"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    align = ["<", "<", ">", ">", ">"]
    lines = ["  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"note: {n}" for n in result["notes"]] + [f"warning: {w}" for w in result["warnings"]])
