"""The report's stability-gap table and task curves, from synthetic metrics.jsonl files."""

import json

import yaml

from cpt_jax.config.base import from_dict, to_dict
from cpt_jax.report import load_run, stability_gaps, write_report
from cpt_jax.train.config import RunConfig


def _run_dir(tmp_path, evals, tasks=()):
    cfg = from_dict(RunConfig, {
        "run_dir": str(tmp_path), "model": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
                                            "num_layers": 1, "num_heads": 2, "num_kv_heads": 1},
        "data": {"seq_len": 16, "global_batch_size": 8,
                 "sources": {"prose": {"kind": "synthetic"}, "code": {"kind": "synthetic"}}},
        "phases": [{"name": "pre", "init": "scratch", "steps": 10, "mixture": {"prose": 1.0},
                    "schedule": {"shape": "constant", "peak_lr": 1e-3}},
                   {"name": "cpt", "steps": 20, "mixture": {"code": 1.0},
                    "schedule": {"shape": "constant", "peak_lr": 1e-3}}]})
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"plan_hash": "x", "config": to_dict(cfg)}))
    rows = [{"kind": "train", "step": s, "phase": int(s > 10), "loss": 3.0, "lr": 1e-3} for s in range(1, 31)]
    rows += [{"kind": "eval", "step": s, "phase": p, "source": src, "loss": loss} for p, src, s, loss in evals]
    rows += [{"kind": "task", "step": s, "phase": p, "phase_name": "cpt", "task": "mc", "acc": a, "acc_norm": a / 2}
             for p, s, a in tasks]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


EVALS = [
    # phase 0: prose only goes down (no gap: worst after the start is below the start)
    (0, "prose", 0, 5.0), (0, "prose", 5, 4.0), (0, "prose", 10, 3.5),
    # phase 1 starts at step 10: prose rises to 4.2 at step 14 and is back at or below 3.5 at step 20
    (1, "prose", 10, 3.5), (1, "prose", 12, 3.9), (1, "prose", 14, 4.2), (1, "prose", 16, 4.2),
    (1, "prose", 20, 3.5), (1, "prose", 30, 3.4),
    # code rises and never recovers
    (1, "code", 10, 6.0), (1, "code", 12, 6.5), (1, "code", 30, 6.1),
]


def test_stability_gaps(tmp_path):
    gaps = {(g.phase, g.source): g for g in stability_gaps(load_run(_run_dir(tmp_path, EVALS)))}
    assert set(gaps) == {("pre", "prose"), ("cpt", "prose"), ("cpt", "code")}
    g = gaps["cpt", "prose"]
    assert (g.start_step, g.start_loss, g.worst_step, g.worst_loss, g.recovered_step) == (10, 3.5, 14, 4.2, 20)
    assert abs(g.gap - 0.7) < 1e-9
    assert gaps["cpt", "code"].recovered_step is None
    pre = gaps["pre", "prose"]  # no rise: the worst later loss is already below the start
    assert (pre.worst_step, pre.recovered_step) == (5, 5) and pre.gap < 0


def test_report_writes_gap_table_and_task_panel(tmp_path):
    run = _run_dir(tmp_path / "run", EVALS, tasks=[(1, 10, 0.5), (1, 20, 0.25), (1, 30, 0.75)])
    report = write_report([str(run)])
    md = (run / "report" / "heldout.md").read_text()
    assert "Stability gap" in report.tables and "Stability gap" in md
    assert "| run | cpt | prose | 10 | 3.5000 | 4.2000 | 14 | +0.7000 | 20 |" in md
    assert "| run | cpt | code | 10 | 6.0000 | 6.5000 | 12 | +0.5000 | not recovered |" in md
    record = load_run(run)
    assert record.task_names == ["mc"] and record.task_curve("mc", "acc") == ([10, 20, 30], [0.5, 0.25, 0.75])
    import matplotlib.image
    png = matplotlib.image.imread(run / "report" / "curves-run.png")
    assert png.shape[0] > png.shape[1]  # four stacked panels (task scores under held-out loss)
