"""Runs and data in object storage, against emulators on 127.0.0.1 that each test starts and
stops (tests/emulators.py): GCS (gcp-storage-emulator) for run_dir, checkpoints and data; S3
(moto server) for prepared data read through the local cache. All through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from emulators import Emulator, upload

REPO = Path(__file__).resolve().parents[1]
PHASES = [
    {"name": "open", "init": "scratch", "steps": 6, "mixture": {"text": 1.0},
     "schedule": {"shape": "infinite", "peak_lr": 3e-3, "warmup_steps": 2, "cooldown_steps": 0, "constant_lr": 3e-3}},
    {"name": "anneal", "steps": 6, "mixture": {"text": 1.0},
     "schedule": {"shape": "linear", "peak_lr": 3e-3, "min_lr": 3e-4}},
]


def plan(run_dir: str, data: str, tok: Path) -> dict:
    return {
        "run_dir": run_dir, "tokenizer": str(tok),
        "model": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                  "num_kv_heads": 1, "max_position_embeddings": 16},
        "data": {"seq_len": 16, "global_batch_size": 8, "sources": {"text": {"path": data}}},
        "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
        "checkpoint": {"every": 2, "keep_last": 20, "async_save": True},
        "eval": {"every": 100, "batches": 1},
        "log": {"every": 1, "tensorboard": True},
        "phases": PHASES,
    }


def cli_env(em: Emulator | None, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **(em.env() if em else {}), "PYTHONPATH": str(REPO), "CPT_JAX_CACHE_DIR": str(tmp_path / "cache"),
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def cli(env, cwd, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cpt_jax", *map(str, args)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def prepared(tmp_path: Path) -> tuple[Path, Path]:
    """A prepared source (local) and its tokenizer."""
    from text_fixtures import documents, vocabulary, word_level_tokenizer, write_jsonl

    words = vocabulary("w", 60)
    tok = word_level_tokenizer(tmp_path / "tok" / "tokenizer.json", words)
    write_jsonl(tmp_path / "in" / "text.jsonl", documents(words, 200, seed=3, max_words=80))
    out = cli(cli_env(None, tmp_path), tmp_path, "prepare", tmp_path / "in", "--out", tmp_path / "data",
              "--tokenizer", tok, "--eval-docs", "8", "--quiet").communicate()[0]
    assert (tmp_path / "data" / "manifest.json").is_file(), out
    return tmp_path / "data", tok


def remote_rows(env: dict, url: str) -> dict[int, dict]:
    """The train rows of a metrics.jsonl in the bucket, read as another process would."""
    code = ("import sys, json; from cpt_jax.train.metrics import read_jsonl; "
            "print(json.dumps(read_jsonl(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code, url], env=env, capture_output=True, text=True, check=True)
    return {r["step"]: r for r in json.loads(out.stdout) if r["kind"] == "train"}


@pytest.mark.slow
def test_gs_plan_killed_resumes_bit_identically_then_exports_evals_reports(tmp_path):
    """A two-phase plan whose run_dir and prepared data are in a GCS bucket: kill -9 inside each
    phase, resume, and get the losses of the same plan run straight through on local disk; then
    export-hf, eval and report read the bucket and write into it."""
    data, tok = prepared(tmp_path)
    with Emulator("gs", data_dir=tmp_path / "gcs") as em:
        em.make_bucket("bkt")
        env = cli_env(em, tmp_path)
        upload(data, "gs://bkt/data", em.env())
        (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan("gs://bkt/run", "gs://bkt/data", tok)))
        before_kill = {}
        for kill_at in (3, 9):  # inside each phase, after one of its checkpoints
            proc = cli(env, tmp_path, "train", "plan.yaml", "--no-progress")
            deadline = time.time() + 300
            rows = {}
            while max(rows, default=0) < kill_at and proc.poll() is None and time.time() < deadline:
                time.sleep(0.5)
                rows = remote_rows(env, "gs://bkt/run/metrics.jsonl")
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            before_kill.update(remote_rows(env, "gs://bkt/run/metrics.jsonl"))
        out = cli(env, tmp_path, "train", "plan.yaml", "--no-progress").communicate()[0]
        rows = remote_rows(env, "gs://bkt/run/metrics.jsonl")
        assert sorted(rows) == list(range(1, 13)), out[-3000:]
        assert all(rows[s]["loss"] == r["loss"] for s, r in before_kill.items())
        # The same plan straight through on local disk: the same losses, bit for bit.
        (tmp_path / "local.yaml").write_text(yaml.safe_dump(plan(str(tmp_path / "run"), str(data), tok)))
        out = cli(env, tmp_path, "train", "local.yaml", "--no-progress").communicate()[0]
        from cpt_jax.train.metrics import read_jsonl
        local = {r["step"]: r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"}
        assert local == {s: r["loss"] for s, r in rows.items()}, out[-2000:]
        # Export, eval and report: read from the bucket, written into it.
        out = cli(env, tmp_path, "export-hf", "gs://bkt/run", "gs://bkt/hf").communicate()[0]
        out += cli(env, tmp_path, "eval", "gs://bkt/run", "--json", "gs://bkt/eval.json").communicate()[0]
        out += cli(env, tmp_path, "report", "gs://bkt/run").communicate()[0]
        code = ("import sys, json; from cpt_jax.storage import as_path; r = as_path('gs://bkt'); "
                "print(json.dumps({'hf': sorted(p.name for p in (r / 'hf').iterdir()), "
                "'eval': json.loads((r / 'eval.json').read_text()), "
                "'report': sorted(p.name for p in (r / 'run' / 'report').iterdir()), "
                "'tb': sorted(p.name for p in (r / 'run' / 'tensorboard').iterdir())}))")
        found = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                          check=True).stdout)
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(found["hf"]), out[-3000:]
        final = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval" and r["step"] == 12
                 and r.get("weights", "raw") == "raw"][0]
        assert abs(found["eval"]["heldout"]["text"]["loss"] - final["loss"]) < 1e-5
        assert {"heldout.md", "curves-run.png"} <= set(found["report"]), out[-3000:]
        assert found["tb"], "TensorBoard events in the bucket"
