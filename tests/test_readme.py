"""README.md's "Real use" block, run line by line on a tiny Llama made with transformers."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from text_fixtures import documents, vocabulary, word_level_tokenizer, write_jsonl
from hf_fixtures import make_tiny_hf_model

pytestmark = pytest.mark.slow  # README's real-use block end to end: `make test-slow` (and CI) runs it

REPO = Path(__file__).resolve().parent.parent


def readme_block(title: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {title}", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines, current = [], ""
    for line in block.splitlines():
        line = line.split("#", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1]
        elif line.strip() or current:
            lines.append((current + line).strip())
            current = ""
    return [ln for ln in lines if ln]


def test_real_use_block_runs_end_to_end(tmp_path):
    work = tmp_path / "work"
    hf_dir = make_tiny_hf_model(tmp_path / "hf", "llama", vocab_size=160)
    general_words, domain_words = vocabulary("g", 60), vocabulary("d", 60)
    word_level_tokenizer(hf_dir / "tokenizer.json", general_words + domain_words)
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                              "eos_token": "</s>", "unk_token": "[UNK]"}))
    general = write_jsonl(tmp_path / "general.jsonl", documents(general_words, 300, seed=1))
    domain = write_jsonl(tmp_path / "domain.jsonl", documents(domain_words, 300, seed=2))
    model = json.loads((hf_dir / "config.json").read_text())
    plan = {
        "run_dir": str(work / "run"), "tokenizer": str(hf_dir / "tokenizer.json"),
        "model": {"family": "llama", "vocab_size": 160, "hidden_size": model["hidden_size"],
                  "intermediate_size": model["intermediate_size"], "num_layers": 2, "num_heads": 4,
                  "num_kv_heads": 2, "max_position_embeddings": 128},
        "data": {"seq_len": 32, "global_batch_size": 8,
                 "sources": {"general": {"path": str(work / "data" / "general")},
                             "domain": {"path": str(work / "data" / "domain")}}},
        "eval": {"every": 5, "batches": 1}, "log": {"tensorboard": True},
        "phases": [{"name": "cpt", "init": f"ckpt:{work / 'upstream'}", "carry": "params", "steps": 10,
                    "mixture": {"domain": 0.75, "general": 0.25},
                    "schedule": {"shape": "wsd", "peak_lr": 1e-3, "warmup_steps": 2, "cooldown_fraction": 0.3}}],
    }
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cpt-jax").write_text(f"#!/bin/sh\nexec {sys.executable} -m cpt_jax \"$@\"\n")
    (bin_dir / "cpt-jax").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), "HF_DIR": str(hf_dir),
           "WORK": str(work), "DOMAIN_TEXT": str(domain), "GENERAL_TEXT": str(general), "PLAN": str(plan_file)}
    commands = readme_block("Real use: from a Hugging Face model to a CPT'd Hugging Face model")
    assert len(commands) >= 8 and all(c.startswith("cpt-jax ") for c in commands)
    for command in commands:
        proc = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    assert (work / "lr.png").is_file() and (work / "run" / "report" / "heldout.md").is_file()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(work / "hf_out")
    assert next(model.parameters()).dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(work / "hf_out")
    assert tok("gaa dab").input_ids == [2, 62 + 1]
