"""An upstream HF model through a two-phase CPT plan and back to HF: on the very held-out batches
cpt_jax evaluated, transformers' loss of the exported model equals cpt_jax's recorded eval loss."""

import numpy as np
import pytest
import torch
from flax import nnx
from hf_fixtures import hf_logits, load_hf_model, make_tiny_hf_model

from cpt_jax.checkpoint.model_checkpoint import load_model_checkpoint
from cpt_jax.config.base import from_dict, to_dict
from cpt_jax.train.config import RunConfig
from cpt_jax.data import DataPipeline
from cpt_jax.hf import export_hf, hf_config_to_model_config, read_hf_config
from cpt_jax.train.loop import Trainer
from cpt_jax.train.metrics import read_jsonl
from cpt_jax.model.params import abstract_model


def packed_nll(model, batch: dict) -> tuple[float, int]:
    """transformers' summed next-token loss on packed rows: each document run of a row is fed on
    its own (transformers has no segment ids) with its positions; targets stay inside a document."""
    nll, count = 0.0, 0
    for tokens, seg, pos in zip(batch["tokens"], batch["segment_ids"], batch["positions"]):
        starts = np.flatnonzero(np.diff(seg, prepend=-1))
        for a, b in zip(starts, [*starts[1:], len(seg)]):
            if seg[a] == 0 or b - a < 2:
                continue
            ids = torch.as_tensor(tokens[a:b][None], dtype=torch.long)
            with torch.no_grad():
                logits = model(ids, position_ids=torch.as_tensor(pos[a:b][None], dtype=torch.long)).logits[0]
            nll += float(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum"))
            count += b - a - 1
    return nll, count


@pytest.mark.parametrize("family", ["llama", pytest.param("qwen2", marks=pytest.mark.slow)])  # qwen2: make test-slow
def test_two_phase_plan_from_hf_exports_back(tmp_path, family):
    hf_dir = make_tiny_hf_model(tmp_path / "hf", family, tie=family == "qwen2")
    plan = {
        "run_dir": str(tmp_path / "run"), "model": to_dict(hf_config_to_model_config(read_hf_config(hf_dir))),
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
    evals = {(r["step"], r["source"]): r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")
             if r["kind"] == "eval"}
    assert evals[12, "domain"] < evals[0, "domain"]  # step 0 is the upstream model; training moved it

    out = export_hf(tmp_path / "run", tmp_path / "hf_out")
    model, info = load_hf_model(out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(model).__name__ == read_hf_config(hf_dir)["architectures"][0]
    pipe = DataPipeline(cfg.data, vocab_size=cfg.model.vocab_size)
    for source in ("general", "domain"):
        nll, count = packed_nll(model, pipe.eval_batches(source, cfg.eval.batches, cfg.data.global_batch_size)[0])
        assert count > 100
        assert abs(nll / count - evals[12, source]) < 1e-4, (source, nll / count, evals[12, source])

    # An earlier step of the run (the end of phase 1) exports too, and is that step's model.
    params6, model_cfg, meta6 = load_model_checkpoint(tmp_path / "run", step=6)
    assert meta6["step"] == 6 and meta6["source"]["hf_dir"] == str(hf_dir.absolute())
    graphdef, _ = abstract_model(model_cfg)
    tokens = np.random.default_rng(0).integers(3, 160, (2, 24))
    ours6 = np.asarray(nnx.merge(graphdef, params6)(tokens, None, None))
    export6 = export_hf(tmp_path / "run", tmp_path / "hf_step6", step=6)
    assert np.abs(hf_logits(export6, tokens) - ours6).max() <= 1e-4
    assert np.abs(hf_logits(model, tokens) - ours6).max() > 1e-3  # step 6 is not step 12
