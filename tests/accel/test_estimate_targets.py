"""`cpt-jax estimate --target`: every phase compiled by the target's own compiler (TPU: libtpu;
NVIDIA: XLA's CUDA compiler) on compile-only devices, with the verdicts and figures it reports.
Small shapes (a tiny Llama) keep each compile to tens of seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path


from compile_fixtures import needs_cuda, needs_tpu

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only targets: JAX's own devices stay CPU


ROOT = Path(__file__).resolve().parents[2]
# configs/tiny.yaml at a row length the kernels take (multiples of 128), head_dim 64, GQA 4:2,
# and a second phase of twice the row length at half the batch with a new RoPE base.
TINY = [str(ROOT / "configs" / "tiny.yaml"), "run_dir=unused", "data.seq_len=128", "model.hidden_size=256",
        "model.intermediate_size=512", "model.num_heads=4", "model.num_kv_heads=2", "mesh.data=1"]


def two_phases(tmp_path) -> str:
    """configs/tiny.yaml with a long second phase (seq 256, batch 8, rope_theta 1e5)."""
    import yaml

    plan = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    plan["phases"].append({"name": "long", "seq_len": 256, "global_batch_size": 8, "rope_theta": 100000.0,
                           "steps": 10, "mixture": {"synthetic": 1.0}, "schedule": {"peak_lr": 1e-3}})
    path = tmp_path / "two_phases.yaml"
    path.write_text(yaml.safe_dump(plan))
    return str(path)


def estimate(tmp_path, capsys, plan: str, *args: str) -> tuple[dict, str]:
    from cpt_jax.cli.main import main

    out = tmp_path / "est.json"
    assert main(["estimate", plan, *TINY[1:], *args, "--json", str(out)]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


@needs_tpu
def test_every_phase_compiled_for_a_tpu_slice(tmp_path, capsys):
    r, text = estimate(tmp_path, capsys, two_phases(tmp_path), "--target", "v5litepod-4", "--breakdown", "6")
    assert r["target"]["name"] == "tpu-v5e:2x2" and r["attention"] == "splash"
    assert 15 * 2**30 < r["target"]["memory_bytes_usable"] <= 16 * 2**30  # read from the compiler's verdict
    short, long = r["phases"]
    assert (long["seq_len"], long["global_batch_size"], long["rope_theta"]) == (256, 8, 1e5)
    for p in (short, long):
        c = p["compiled"]
        assert c["params"] == p["analytic"]["params"] and c["opt_state"] == p["analytic"]["opt_state"]
        assert c["peak"] > c["memory"]["arguments"] > 0 and c["compile_s"] > 0
        assert c["optimal_seconds"] > 0 and p["fits"] is True
        assert p["device"]["verdict"] == "the TPU compiler's verdict"
        b = c["breakdown"]  # read from libtpu's own live ranges (HBM only)
        assert {"parameters", "optimizer", "activations"} <= set(b["by_kind"]) and len(b["buffers"]) == 6
        assert b["by_kind"]["optimizer"] >= 0.99 * c["opt_state"]
    assert r["worst"] in ("pretrain", "long") and r["host_peak_rss_bytes"] < 4e9
    assert "TPU compiler's optimal_seconds" in text and "counts each loop body once" in text
    assert "phase 'long'" in text and "worst phase" in text


@needs_tpu
def test_a_plan_too_big_for_its_slice_is_reported_not_fitting(tmp_path, capsys):
    """2 B parameters of vocabulary on one v5e chip (16 GiB): the compiler's RESOURCE_EXHAUSTED
    becomes 'does not fit', exit 0, with the analytic what-ifs."""
    r, text = estimate(tmp_path, capsys, TINY[0], "model.vocab_size=4000000", "--target", "v5e-1")
    assert r["fits"] is False and "oom" in r["compiled"] and "RESOURCE_EXHAUSTED" in r["compiled"]["oom"]
    assert "DOES NOT FIT" in text and "biggest item" in text


@needs_cuda
def test_every_phase_compiled_for_h100s(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    r, text = estimate(tmp_path, capsys, two_phases(tmp_path), "--target", "h100x8")
    assert r["attention"] == "pallas_gpu" and r["target"]["topology"] == "1x1x8"
    assert r["target"]["memory_bytes_usable"] == 0.75 * 80e9  # what JAX preallocates
    for p in r["phases"]:
        assert p["compiled"]["params"] == p["analytic"]["params"] and p["fits"] is True
        assert p["compiled"]["optimal_seconds"] is None  # the GPU compiler has no cost model here
    assert "75% of 80 GB" in text


@needs_cuda
def test_gpu_hosts_are_the_first_field_of_the_topology():
    """h100x16 is "2x1x8": 2 processes (hosts) of 8 GPUs each."""
    from cpt_jax.estimate.targets import target_devices

    devices, info = target_devices("h100x16")
    assert info.topology == "2x1x8" and info.hosts == 2
    by_host = {}
    for d in devices:
        by_host.setdefault(d.process_index, []).append(d)
    assert sorted(len(v) for v in by_host.values()) == [8, 8]
    assert devices[0].device_kind == "NVIDIA H100 80GB HBM3"
