"""An HF upstream model through a two-phase CPT plan and back to HF: the exported model's loss in
transformers equals cpt_jax's eval loss."""

import copy

import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from cpt_jax.checkpoint.params import load_model_checkpoint
from cpt_jax.config.base import apply_overrides, from_dict
from cpt_jax.config.run import RunConfig
from cpt_jax.hf import export_hf
from cpt_jax.hf.config_map import hf_to_model_config
from cpt_jax.hf.importer import read_hf_config
from cpt_jax.config.base import to_dict
from cpt_jax.train.loop import Trainer
from cpt_jax.train.metrics import read_jsonl
from cpt_jax.train.state import abstract_model
from cpt_jax.train.step import make_eval_step
from hf_fixtures import make_tiny_hf_model


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_two_phase_plan_from_hf_exports_back(tmp_path, family):
    hf_dir = make_tiny_hf_model(tmp_path / "hf", family, tie=family == "qwen2")
    model = to_dict(hf_to_model_config(read_hf_config(hf_dir)))
    plan = {
        "run_dir": str(tmp_path / "run"), "model": model,
        "data": {"seq_len": 32, "global_batch_size": 8,
                 "sources": {"general": {"kind": "synthetic", "seed": 1, "num_docs": 128, "eval_docs": 16},
                             "domain": {"kind": "synthetic", "seed": 2, "num_docs": 128, "eval_docs": 16}}},
        "mesh": {"data": 2, "fsdp": 2, "tensor": 2}, "log": {"tensorboard": False},
        "eval": {"every": 6, "batches": 1},
        "phases": [
            {"name": "warm", "init": f"hf:{hf_dir}", "carry": "params", "steps": 6, "mixture": {"general": 1.0},
             "schedule": {"shape": "constant", "peak_lr": 1e-3}},
            {"name": "cpt", "steps": 6, "mixture": {"domain": 0.75, "general": 0.25},
             "schedule": {"shape": "cosine", "peak_lr": 1e-3, "warmup_steps": 2}},
        ],
    }
    cfg = from_dict(RunConfig, plan)
    Trainer(cfg, progress=False).run()
    evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    # The phase-0 start eval is the upstream model itself; training moved it.
    start = {r["source"]: r["loss"] for r in evals if r["step"] == 0}
    end = {r["source"]: r["loss"] for r in evals if r["step"] == 12}
    assert end["domain"] < start["domain"]

    out = export_hf(tmp_path / "run", tmp_path / "hf_out")
    hf_model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf_model).__name__ == read_hf_config(hf_dir)["architectures"][0]
    # One held-out document per row, so transformers (no packing) sees exactly what cpt_jax sees.
    tokens = np.random.default_rng(0).integers(3, 160, (4, 24)).astype(np.int32)
    batch = {"tokens": tokens, "segment_ids": np.ones_like(tokens), "positions": np.tile(np.arange(24, dtype=np.int32), (4, 1))}
    params, mcfg, meta = load_model_checkpoint(tmp_path / "run")
    assert meta["step"] == 12 and meta["source"]["hf_dir"] == str(hf_dir.absolute())
    graphdef, _ = abstract_model(mcfg)
    from cpt_jax.sharding import MeshConfig, make_mesh
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    sums = make_eval_step(graphdef, jax.tree.map(lambda x: x.sharding, params), mesh)(params, batch)
    ours = float(sums["nll_sum"]) / float(sums["tokens"])
    with torch.no_grad():
        theirs = float(hf_model(torch.as_tensor(tokens, dtype=torch.long), labels=torch.as_tensor(tokens, dtype=torch.long)).loss)
    assert abs(ours - theirs) < 1e-4, (ours, theirs)
