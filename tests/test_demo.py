"""The embedded demo, at its test size: a real CPT story from the standard library's text."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the whole demo story at --size test: `make test-slow` (and CI) runs it

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": ""}  # the demo runs on the one real CPU device
    proc = subprocess.run([sys.executable, "-m", "cpt_jax", "demo", "--size", "test", "--out", str(out), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_report_has_table_curves_lr_plot_and_sample(demo):
    out, stdout = demo
    report = (out / "report" / "README.md").read_text()
    for run in ("pretrain", "replay", "no-replay"):
        assert f"| {run} |" in report
    assert "## Sample from the final model" in report and "def read_config(path):" in report
    for png in ("learning_forgetting.png", "lr.png"):
        data = (out / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert report in stdout  # the demo prints its report


def test_report_shows_tasks_stability_gap_per_source_loss_and_epochs(demo):
    from cpt_jax.report import load_run

    out, _ = demo
    report = (out / "report" / "README.md").read_text()
    assert "| replay | cpt-code-replay | prose-cloze |" in report and "| no-replay | cpt-code-only | code-cloze |" in report
    assert "## Stability gap" in report and "| replay | cpt-code-replay | prose |" in report
    assert "| replay | cpt-code-replay | prose | 5.00% |" in report  # requested share, then realised and epochs
    run = load_run(out / "runs" / "replay")
    assert run.train_sources == ["code", "prose"] and run.task_names == ["code-cloze", "prose-cloze"]
    acc = [r["acc"] for r in run.tasks]
    assert all(0.0 <= a <= 1.0 for a in acc)
    evals = sorted({r["step"] for r in run.evals})
    assert evals[:3] == [0, 10, 20]  # dense at the phase start (dense_every 10 over the first 20 steps)
    last = [r for r in run.train if "epochs/prose" in r][-1]
    assert 0 < last["epochs/prose"] and abs(last["share/prose"] - 0.05) < 1e-9
    png = (out / "report" / "curves-replay.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_and_replay_reduces_forgetting(demo):
    out, _ = demo
    summary = json.loads((out / "report" / "summary.json").read_text())
    final = summary["final"]
    # Phase 1 learned code in both variants ...
    pre = final["pretrain"]
    assert final["replay"]["code"] < pre["code"] - 0.3 and final["no-replay"]["code"] < pre["code"] - 0.3
    # ... and both forgot prose, the run with 5% replay less so.
    forgot = summary["forgetting"]
    assert forgot["no-replay"] > 0
    assert forgot["replay"] < forgot["no-replay"], forgot


def test_exported_model_and_tokenizer_load_in_transformers(demo):
    import numpy as np
    import sentencepiece as spm
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = demo
    model = AutoModelForCausalLM.from_pretrained(out / "hf_model", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out / "hf_model")
    sp = spm.SentencePieceProcessor(model_file=str(out / "data" / "tokenizer.model"))
    text = "def parse(self, text):\n    return text.split()"
    assert tok(text).input_ids == sp.encode(text)
    ids = torch.as_tensor([sp.encode(text)])
    with torch.no_grad():
        loss = float(model(ids, labels=ids).loss)
    assert np.isfinite(loss) and loss < np.log(sp.get_piece_size())  # better than uniform: it learned


def test_demo_plans_are_runnable_configs(demo):
    from cpt_jax.train.config import load_run_config
    out, _ = demo
    plans = sorted((out / "plans").glob("*.yaml"))
    assert [p.stem for p in plans] == ["no-replay", "pretrain", "replay"]
    replay = load_run_config(out / "plans" / "replay.yaml")
    assert replay.phases[0].mixture == {"code": 0.95, "prose": 0.05}
    # Rerunning a finished plan resumes at its end and does nothing else.
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": ""}
    proc = subprocess.run([sys.executable, "-m", "cpt_jax", "train", str(out / "plans" / "replay.yaml"), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "resuming" in proc.stderr, proc.stderr[-2000:]
