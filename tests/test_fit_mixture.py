"""`cpt-jax fit-mixture`: the mixture law recovers a known law from a sweep of run directories,
predicts a held-out ratio within its stated error, and recommends the right replay ratio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from cpt_jax.cli.main import main
from cpt_jax.report import load_run
from cpt_jax.report.mixture_law import EPS, fit_mixture

TRUE = {"prose": (2.0, 0.30, 0.45), "code": (1.5, 0.05, 0.9)}  # E, C, gamma of each source's share
START_PROSE = 2.6


def true_loss(source: str, share: float) -> float:
    e, c, g = TRUE[source]
    return e + c / (share + EPS) ** g


def write_run(path, ratio: float, seed: int, noise: float) -> None:
    """A run directory as `cpt-jax train` leaves it (config.yaml, metrics.jsonl), losses from TRUE."""
    rng = np.random.default_rng(seed)
    sources = {"prose": {"kind": "synthetic"}, "code": {"kind": "synthetic", "seed": 1}}
    config = {
        "run_dir": str(path), "model": {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
                                        "num_heads": 4, "max_position_embeddings": 128},
        "data": {"seq_len": 32, "global_batch_size": 8, "sources": sources},
        "phases": [
            {"name": "pretrain", "init": "scratch", "steps": 10, "mixture": {"prose": 1.0},
             "schedule": {"peak_lr": 1e-3, "warmup_steps": 2}},
            {"name": "cpt", "steps": 10, "mixture": {"code": 1.0 - ratio, "prose": ratio},
             "schedule": {"peak_lr": 1e-3, "warmup_steps": 2}},
        ],
    }
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump({"plan_hash": "x", "config": config}))
    rows = [{"kind": "eval", "step": 10, "phase": 1, "source": "prose", "loss": START_PROSE},
            {"kind": "eval", "step": 10, "phase": 1, "source": "code", "loss": 5.0}]
    for source, share in (("prose", ratio), ("code", 1.0 - ratio)):
        rows.append({"kind": "eval", "step": 20, "phase": 1, "source": source,
                     "loss": true_loss(source, share) + noise * rng.standard_normal()})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    runs = []
    # Shares must span enough of each law to pin it down: with the replay ratio only up to 0.5 the code
    # share stays in [0.5, 1], where E=1.5, gamma=0.9 and E=0, gamma=0.04 fit equally (not identifiable).
    for ratio in (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9):
        for seed in (0, 1):
            path = root / f"r{ratio}-s{seed}"
            write_run(path, ratio, seed=int(ratio * 1000) * 10 + seed, noise=0.004)
            runs.append(path)
    return runs


def test_fit_recovers_the_law_and_predicts_the_held_out_ratio(sweep):
    fit = fit_mixture([load_run(p) for p in sweep], "prose", holdout=0.1, budget=0.2)
    assert fit.new == "code"
    for source, params in TRUE.items():
        assert fit.fits[source].params == pytest.approx(params, rel=0.05), source
    for source in ("prose", "code"):
        h = fit.holdout[source]
        assert h["within"], h
        assert h["error"] < 0.02
        assert h["measured"] == pytest.approx(true_loss(source, 0.1 if source == "prose" else 0.9), abs=0.01)
    # The true law's smallest ratio with forgetting <= 0.2 (start 2.6): 2.0 + 0.3/(r+eps)^0.45 <= 2.8.
    grid = np.linspace(0, 1, 1001)
    want = grid[np.flatnonzero([true_loss("prose", r) - START_PROSE <= 0.2 for r in grid])[0]]
    assert fit.recommendation["ratio"] == pytest.approx(want, abs=0.02)


def test_a_wrong_law_would_be_caught(sweep):
    """The held-out check is not vacuous: with the held-out run's losses shifted, it fails."""
    runs = [load_run(p) for p in sweep]
    for run in runs:
        if run.config.phases[1].mixture["prose"] == 0.1:
            for r in run.evals:
                if r["step"] == 20:
                    r["loss"] += 0.3
    fit = fit_mixture(runs, "prose", holdout=0.1)
    assert not fit.holdout["prose"]["within"]


def test_cli_writes_json_and_plot(sweep, tmp_path, capsys):
    out = tmp_path / "fit.json"
    rc = main(["fit-mixture", *map(str, sweep), "--replay", "prose", "--holdout", "0.1", "--budget", "0.2",
               "--json", str(out), "--plot", str(tmp_path / "fit.png")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "smallest replay ratio" in text and "held-out ratio 0.1" in text
    data = json.loads(out.read_text())
    assert set(data["fits"]) == {"prose", "code"} and data["recommendation"]["ratio"] is not None
    assert (tmp_path / "fit.png").stat().st_size > 0


def test_too_few_ratios_is_a_clear_error(sweep, capsys):
    rc = main(["fit-mixture", *map(str, sweep[:6]), "--replay", "prose"])
    assert rc == 2
    assert "4 or more replay ratios" in capsys.readouterr().err


def test_a_constant_law_is_reported_not_identifiable(tmp_path, capsys):
    """A source whose loss does not move with its share (a flat sweep) fits a constant law: the CLI
    says so (exit 0), predicts nothing for it, and the JSON carries identifiable: false."""
    runs = []
    for ratio in (0.0, 0.01, 0.05, 0.1, 0.25, 0.5):
        path = tmp_path / f"r{ratio}"
        write_run(path, ratio, seed=int(ratio * 1000), noise=0.0)
        rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        for r in rows:
            if r["step"] == 20 and r["source"] == "code":
                r["loss"] = 4.0 + 0.003 * np.sin(ratio * 50)  # noise around a constant, no trend
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(path)
    fit = fit_mixture([load_run(p) for p in runs], "prose", holdout=0.1)
    assert not fit.fits["code"].identifiable and fit.fits["prose"].identifiable
    assert fit.holdout["code"]["predicted"] is None and fit.holdout["prose"]["predicted"] is not None
    out = tmp_path / "fit.json"
    rc = main(["fit-mixture", *map(str, runs), "--replay", "prose", "--holdout", "0.1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "code: the law is not identifiable" in text and "not identifiable |" in text
    data = json.loads(out.read_text())
    assert data["identifiable"] is False and data["fits"]["code"]["identifiable"] is False
    assert data["fits"]["prose"]["identifiable"] is True and data["fits"]["code"]["degenerate"]


def test_the_known_laws_are_identifiable(sweep):
    fit = fit_mixture([load_run(p) for p in sweep], "prose")
    assert fit.identifiable, {s: f.degenerate for s, f in fit.fits.items()}
