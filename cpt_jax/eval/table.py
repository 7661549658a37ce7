"""The printed form of `evaluate`'s results."""

from __future__ import annotations

TASK_COLUMNS = ("acc", "acc_norm", "word_perplexity", "byte_perplexity", "bits_per_byte")


def format_results(results: dict) -> str:
    lines = []
    if results.get("heldout"):
        lines.append(f"{'source':<16} {'loss':>8} {'ppl':>10} {'tokens':>10}")
        for source, r in results["heldout"].items():
            lines.append(f"{source:<16} {r['loss']:>8.4f} {r['ppl']:>10.2f} {int(r['tokens']):>10,}")
    if results.get("tasks"):
        if lines:
            lines.append("")
        lines.append(f"{'task':<16} {'metric':<16} {'value':>10} {'n':>6}")
        for name, m in results["tasks"].items():
            for key in TASK_COLUMNS:
                if key in m:
                    lines.append(f"{name:<16} {key:<16} {m[key]:>10.4f} {int(m['n']):>6}")
    return "\n".join(lines)
