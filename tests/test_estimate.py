"""`cpt-jax estimate`: the memory it predicts is what a run allocates, and it answers for the
three real shapes of configs/estimate/ (analytic; compiling those is too slow for this suite)."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from cpt_jax.cli.main import main
from cpt_jax.data.pipeline import BATCH_KEYS
from cpt_jax.estimate import estimate_plan
from cpt_jax.model.params import init_params
from cpt_jax.train.config import load_run_config
from cpt_jax.train.setup import build_setup
from cpt_jax.train.state import new_train_state

ROOT = Path(__file__).resolve().parents[1]
PLANS = {name: ROOT / "configs" / "estimate" / f"{name}.yaml"
         for name in ("llama3.2-1b", "llama3.1-8b", "llama3.1-70b")}
# Modelled temporaries vs XLA:CPU's buffer assignment for the tiny plan: the model is a sum of
# big items (activations, logits, gradients, update); XLA reuses buffers and adds fusion
# scratch, so they agree only roughly: for this tiny plan, where fixed-size buffers weigh most,
# the model gave 0.50x of XLA:CPU (for Llama-3.2-1B on 8 devices: 1.19x).
TEMP_TOLERANCE = 3.0


def tiny_cfg(tmp_path, **mesh):
    cfg = load_run_config(ROOT / "configs" / "tiny.yaml", [f"run_dir={tmp_path / 'run'}"])
    return dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, **mesh)) if mesh else cfg


def device0_bytes(tree) -> int:
    dev = jax.devices()[0]
    return sum(s.data.nbytes for leaf in jax.tree.leaves(tree) for s in leaf.addressable_shards if s.device == dev)


def test_estimate_matches_what_a_run_allocates(tmp_path):
    cfg = tiny_cfg(tmp_path)
    est = estimate_plan(cfg, 8)
    a, c = est["analytic"], est["compiled"]

    setup = build_setup(cfg)  # the real run's mesh, shardings and jitted step on 8 devices
    state = new_train_state(setup.tx, init_params(cfg.model, setup.mesh, 0), setup.shardings)
    assert a["params"] == c["params"] == device0_bytes(state.params) > 0
    assert a["opt_state"] == c["opt_state"] == device0_bytes(state.opt_state) > 0

    rows, seq = cfg.data.global_batch_size, cfg.data.seq_len
    batch = {k: jax.device_put(np.ones((rows, seq), np.int32), setup.batch_sharding) for k in BATCH_KEYS}
    real = setup.train_step.lower(state, batch).compile().memory_analysis()
    assert c["memory"]["temporaries"] == real.temp_size_in_bytes  # the same program, abstractly compiled
    # Arguments: parameters, optimizer state, the batch arrays the step reads, the step counter.
    assert c["memory"]["arguments"] == real.argument_size_in_bytes == c["params"] + c["opt_state"] + c["batch"] + 4
    assert 0 < c["batch"] <= a["batch"]  # the analytic batch also counts arrays the step does not read
    ratio = a["temporaries"] / c["memory"]["temporaries"]
    assert 1 / TEMP_TOLERANCE <= ratio <= TEMP_TOLERANCE, ratio


def test_compile_in_a_subprocess_for_another_device_count(tmp_path):
    cfg = tiny_cfg(tmp_path, data=1)
    est = estimate_plan(cfg, 2)  # this process has 8 devices: the compile runs in a 2-device child
    assert est["analytic"]["mesh"] == {"data": 1, "fsdp": 2, "context": 1, "tensor": 1}
    assert est["compiled"]["params"] == est["analytic"]["params"]
    assert est["compiled"]["opt_state"] == est["analytic"]["opt_state"]
    assert est["compiled"]["flops"] > 0


@pytest.mark.parametrize("name", list(PLANS))
def test_three_shapes_on_8_64_256_devices(name):
    cfg = load_run_config(PLANS[name])
    n_params = cfg.model.num_params()
    previous = None
    for n in (8, 64, 256):
        est = estimate_plan(cfg, n, device="h100", compile=False)
        a = est["analytic"]
        # fp32 matrices fully sharded (fsdp=-1), the norm scales replicated on every device.
        norms = (2 * cfg.model.num_layers + 1) * cfg.model.hidden_size
        assert a["params"] == 4 * (n_params - norms) // n + 4 * norms
        assert a["opt_state"] == pytest.approx(2 * a["params"], rel=0.01)  # AdamW's two moments
        assert a["model_flops"] > 6 * n_params * cfg.tokens_per_step
        if previous:
            assert a["peak"] < previous
        previous = a["peak"]


def test_cli_reports_fit_and_what_to_change(tmp_path, capsys):
    out = tmp_path / "est.json"
    assert main(["estimate", str(ROOT / "configs" / "tiny.yaml"), "--devices", "8", "--device", "v5e",
                 "--json", str(out), "--breakdown", "5"]) == 0
    text = capsys.readouterr().out
    assert "FITS" in text and "compiled (XLA:CPU" in text and "buffer assignment" in text
    r = json.loads(out.read_text())
    assert r["device"]["fits"] is True
    # --breakdown: the buffers live at the compiler's peak, by kind; the state is there in full
    b, c = r["compiled"]["breakdown"], r["compiled"]
    assert len(b["buffers"]) == 5 and "largest buffers live at the peak" in text
    assert {"parameters", "optimizer", "activations", "logits", "batch"} <= set(b["by_kind"])
    assert b["by_kind"]["optimizer"] >= 0.99 * c["opt_state"] and b["by_kind"]["parameters"] >= c["params"]
    assert 0.9 * c["peak"] <= b["peak_bytes"] <= c["peak"]

    assert main(["estimate", str(PLANS["llama3.1-70b"]), "--devices", "8", "--device", "h100",
                 "--analytic-only"]) == 0
    text = capsys.readouterr().out
    assert "DOES NOT FIT" in text and "analytic only" in text
    assert "60.00 GB usable" in text and "75% of 80 GB: JAX's default preallocation" in text  # not 90%
    assert "biggest item: activations" in text and "optimizer.grad_accum=32" in text

    assert main(["estimate", str(ROOT / "configs" / "tiny.yaml"), "--devices", "8", "--device", "b200",
                 "--analytic-only"]) == 2
    assert "unknown device kind 'b200'" in capsys.readouterr().err


def test_every_phase_is_estimated_and_the_worst_named(tmp_path, capsys):
    """configs/long_context.yaml: a 4k phase, then 16k rows at a quarter of the batch and a new
    RoPE base (twice: the cooldown is the same step). Each phase gets its own figures."""
    out = tmp_path / "est.json"
    assert main(["estimate", str(ROOT / "configs" / "long_context.yaml"), "--devices", "64", "--device", "h100",
                 "--analytic-only", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert [p["name"] for p in r["phases"]] == ["short-4k", "long-16k", "cooldown-16k"]
    short, long, cool = r["phases"]
    assert (short["seq_len"], short["global_batch_size"], short["rope_theta"]) == (4096, 256, 10000.0)
    assert (long["seq_len"], long["global_batch_size"], long["rope_theta"]) == (16384, 64, 500000.0)
    assert short["tokens_per_step"] == long["tokens_per_step"] == 2**20
    for p in r["phases"]:  # the JSON schema of a phase
        assert set(p["analytic"]) >= {"params", "opt_state", "temporaries", "peak"}
        assert p["compiled"] is None and isinstance(p["fits"], bool)
        assert p["analytic"]["params"] == short["analytic"]["params"]  # the same parameters in every phase
    # The analytic model counts tokens per device (flash-style attention: memory linear in L), so
    # at the same tokens per step the phases tie and the first is named; attention FLOPs grow with L.
    assert long["analytic"]["peak"] == short["analytic"]["peak"] and r["worst"] == "short-4k"
    assert long["analytic"]["model_flops"] > short["analytic"]["model_flops"]
    assert cool["analytic"] == long["analytic"]

    # A long phase with twice the tokens per step is the worst, and the top-level figures are its.
    cfg = load_run_config(ROOT / "configs" / "long_context.yaml")
    cfg = dataclasses.replace(cfg, phases=[cfg.phases[0], dataclasses.replace(cfg.phases[1], global_batch_size=128),
                                           dataclasses.replace(cfg.phases[2], global_batch_size=64)])
    r = estimate_plan(cfg, 64, device="h100", compile=False)
    assert r["worst"] == "long-16k" and r["analytic"] == r["phases"][1]["analytic"]
    assert r["phases"][1]["analytic"]["peak"] > r["phases"][0]["analytic"]["peak"]
    assert "phase 'short-4k'" in text and "phase 'long-16k'" in text and "worst phase: 'short-4k'" in text


def test_micro_batching_per_phase(tmp_path):
    """grad_accum splits each phase's own batch: the 16k phase's 64 rows over 64 devices cannot be
    accumulated 4 ways (refused); the 4k phase's micro-batch shrinks with accumulation."""
    cfg = load_run_config(ROOT / "configs" / "long_context.yaml", ["optimizer.grad_accum=2"])
    r = estimate_plan(cfg, 32, device="h100", compile=False)
    base = estimate_plan(load_run_config(ROOT / "configs" / "long_context.yaml"), 32, device="h100", compile=False)
    for p, b in zip(r["phases"], base["phases"]):
        assert p["grad_accum"] == 2
        act, base_act = (x["analytic"]["temporaries_by_kind"]["activations"] for x in (p, b))
        assert act * 2 == base_act


def test_phases_with_the_same_step_compile_once(tmp_path, monkeypatch):
    """Each distinct step is compiled once (compiles are the slow part); the compile is stubbed
    here to count calls: real compiles of several phases run in tests/accel."""
    import cpt_jax.estimate.plan as plan

    calls = []

    def fake_compile(cfg, n, phase, breakdown):
        calls.append(phase)
        run = cfg.phase_run(phase)
        temps = run.data.seq_len * 1000
        return {"memory": {"arguments": 10, "temporaries": temps, "outputs": 0, "aliased": 0}, "params": 1,
                "opt_state": 2, "batch": 3, "peak": 10 + temps, "flops": 1.0, "lower_s": 0.0, "compile_s": 0.0}

    monkeypatch.setattr(plan, "compiled_cpu", fake_compile)
    cfg = tiny_cfg(tmp_path)
    cfg = dataclasses.replace(cfg, phases=[cfg.phases[0], dataclasses.replace(cfg.phases[0], name="again"),
                                           dataclasses.replace(cfg.phases[0], name="long", seq_len=128)])
    r = estimate_plan(cfg, 8, device="h100")
    assert calls == [0, 2]
    first, again, long = r["phases"]
    assert again["compiled"]["same_step_as"] == "pretrain" and "same_step_as" not in long["compiled"]
    assert again["compiled"]["memory"] == first["compiled"]["memory"]
    assert r["worst"] == "long" and r["compiled"] == long["compiled"] and r["device"] == long["device"]
    assert long["device"]["peak_bytes"] == long["compiled"]["peak"] and long["device"]["basis"] == "compiled"


def test_target_without_its_compiler_says_how_to_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("libtpu", "jax_plugins.xla_cuda12") else real(name, *a))
    for target, extra in (("v5p-8", "cpt-jax[tpu]"), ("h100x8", "cpt-jax[cuda12]")):
        assert main(["estimate", str(ROOT / "configs" / "tiny.yaml"), "--target", target]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pip install '{extra}'" in err
    # --analytic-only needs no compiler: the target's devices and memory only
    out = tmp_path / "a.json"
    assert main(["estimate", str(ROOT / "configs" / "tiny.yaml"), "--target", "v5p-8", "--analytic-only",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["target"]["num_devices"] == 4 and r["attention"] == "splash" and r["compiled"] is None


@pytest.mark.parametrize("args,message", [
    (["--devices", "8", "--target", "v5p-8"], "either --target"), ([], "either --target"),
    (["--target", "v5p-8", "--breakdown", "--analytic-only"], "drop --analytic-only"),
    (["--target", "tpu-v9:2x2"], "unknown target"),
])
def test_estimate_bad_arguments(args, message, capsys):
    assert main(["estimate", str(ROOT / "configs" / "tiny.yaml"), *args]) == 2
    assert message in capsys.readouterr().err


# --- targets: names -> compile-only devices (parsing only; compiling needs the extras, tests/accel)

@pytest.mark.parametrize("name,canonical,topology,devices", [
    ("tpu-v5p:4x8x8", "tpu-v5p:4x8x8", "v5p:4x8x8", 256),
    ("tpu-v6e:16x16", "tpu-v6e:16x16", "v6e:16x16", 256),
    ("tpu-v4:2x2x1", "tpu-v4:2x2x1", "v4:2x2x1", 4),
    ("v5p-8", "tpu-v5p:2x2x1", "v5p:2x2x1", 4),  # v5p-N counts TensorCores: 4 chips
    ("v5p-128", "tpu-v5p:4x4x4", "v5p:4x4x4", 64),
    ("v5p-256", "tpu-v5p:4x4x8", "v5p:4x4x8", 128),
    ("v5p-512", "tpu-v5p:4x8x8", "v5p:4x8x8", 256),
    ("v4-64", "tpu-v4:2x4x4", "v4:2x4x4", 32),
    ("v5e-16", "tpu-v5e:4x4", "v5e:4x4", 16),  # v5e-N, v6e-N count chips
    ("v5litepod-8", "tpu-v5e:2x4", "v5e:2x4", 8),
    ("v6e-256", "tpu-v6e:16x16", "v6e:16x16", 256),
    ("v6e-1", "tpu-v6e:1x1", "v6e:1x1", 1),
    ("h100x64", "h100x64", "8x1x8", 64),  # hosts x 1 x GPUs per host
    ("H200x8", "h200x8", "1x1x8", 8),
    ("a100-80gbx16", "a100-80gbx16", "2x1x8", 16),
    ("h100x4", "h100x4", "1x1x4", 4),
])
def test_target_names(name, canonical, topology, devices):
    from cpt_jax.estimate.targets import parse_target

    t = parse_target(name)
    assert (t.name, t.topology, t.num_devices) == (canonical, topology, devices)
    assert t.memory_bytes_usable <= t.memory_bytes and t.peak_flops > 0


def test_target_slices_and_usable_gpu_memory(monkeypatch):
    from cpt_jax.estimate.targets import parse_target

    assert parse_target("v5p-8", slices=2).num_devices == 8
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    assert parse_target("h100x8").memory_bytes_usable == 0.75 * 80e9  # JAX's default preallocation
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".9")
    assert parse_target("h100x8").memory_bytes_usable == 0.9 * 80e9


@pytest.mark.parametrize("name,slices,message", [
    ("tpu-v7:2x2", 1, "unknown target"), ("v5p-7", 1, "two per chip"), ("v5p-24", 1, "power-of-two"),
    ("v6e-512", 1, "at most 256"), ("tpu-v5p:2x2", 1, "3 dimensions"), ("tpu-v6e:0x2", 1, ">= 1"),
    ("h100x12", 1, "multiple of 8"), ("h100x8", 2, "--slices is for TPU"), ("v5e-16", 0, ">= 1"),
])
def test_bad_target_names(name, slices, message):
    from cpt_jax.errors import UserError
    from cpt_jax.estimate.targets import parse_target

    with pytest.raises(UserError, match=message):
        parse_target(name, slices)


def test_gpu_target_description_is_generated_from_the_spec():
    from cpt_jax.estimate.gpu_specs import H100_SXM, target_config_text

    text = target_config_text(H100_SXM)
    assert "core_count: 132" in text and "major: 9" in text and "ACCELERATED_FEATURES" in text
    assert f"device_memory_size: {80 * 10**9}" in text and 'name: "NVIDIA H100 80GB HBM3"' in text


def test_breakdown_reads_the_peak_and_attributes_each_buffer():
    """The parsers on the text XLA writes (live ranges, scheduled HLO), and the attribution."""
    from cpt_jax.estimate.breakdown import classify, element_shape, parse_peak, parse_program

    live = """  Live ranges at 9 (peak):
    fusion.3{}: 4096 bytes (cumulative: 4096 bytes)
    while.1{2}: 64 bytes (cumulative: 4160 bytes)
  Stack trace breakdown for peak usage: 4160 bytes"""
    assert parse_peak(live) == [("fusion.3", "", 4096), ("while.1", "2", 64)]
    program = parse_program(
        '  %p = f32[16,8]{1,0:T(8,128)} parameter(0), metadata={op_name="state.opt_state[1].mu[\'embed\']"}\n'
        '  ROOT %fusion.3 = (bf16[4,8]{1,0}, f32[2,3,256]{2,1,0:T(8,128)S(1)}) fusion(%p), kind=kLoop, '
        'metadata={op_name="jit(step_fn)/jvp()/dot_general"}')
    assert program["p"] == ("f32[16,8]{1,0:T(8,128)}", "parameter", "state.opt_state[1].mu['embed']")
    assert element_shape(program["fusion.3"][0], "1") == "f32[2,3,256]{2,1,0:T(8,128)S(1)}"
    params, vocab = {(16, 8), (8, 16)}, {256}
    assert classify("state.opt_state[1].mu['embed']", "f32", (16, 8), params, vocab) == "optimizer"
    assert classify("state.params['embed']", "f32", (16, 8), params, vocab) == "parameters"
    assert classify("batch['tokens']", "s32", (4, 8), params, vocab) == "batch"
    assert classify("jit(step_fn)/transpose(jvp())/dot_general", "f32", (8, 16), params, vocab) == "gradients"
    assert classify("jit(step_fn)/jvp()/all-gather", "bf16", (8, 16), params, vocab) == "parameters"
    assert classify("jit(step_fn)/mul", "f32", (16, 8), params, vocab) == "optimizer"  # the update
    assert classify("jit(step_fn)/jvp()/dot_general", "f32", (2, 3, 256), params, vocab) == "logits"
    assert classify("jit(step_fn)/transpose(jvp())/exp", "f32", (2, 3, 64), params, vocab) == "activations"


@pytest.mark.parametrize("overrides, expected", [
    ([], (8192, 8016)),  # automatic: 16 tiles of 8016 columns, so one row of 8192 fits the chunk budget
    (["model.logits_vocab_tiles=1"], (512, 128256)),  # one tile: the automatic chunk shrinks to 512
    (["model.logits_chunk=0"], (8192, 128256)),  # the full logits: the whole row, one tile
    (["model.logits_chunk=1024", "model.logits_vocab_tiles=4"], (1024, 32064)),
])
def test_analytic_lm_head_follows_the_models_tiling(overrides, expected):
    """The estimate's LM-head term is cut as the model cuts the head (decoder.logits_tiling): Llama-3.1-8B
    on 64 devices, one row of 8192 per device."""
    from cpt_jax.estimate.analytic import head_tile, temporaries
    from cpt_jax.sharding.mesh import abstract_mesh

    cfg = load_run_config(ROOT / "configs" / "estimate" / "llama3.1-8b.yaml", ["data.global_batch_size=64", *overrides])
    mesh = abstract_mesh(cfg.mesh, 64)
    assert head_tile(cfg, mesh) == expected
    positions, columns = expected
    t = temporaries(cfg, mesh, params_bytes=0)
    assert t["lm_head"] == positions * columns * 8 + cfg.model.hidden_size * columns * 6


# The compiled peaks recorded by `cpt-jax estimate --target` (BUILD.md, "Compiled for real
# targets"; the targets' own compilers, with the LM head in vocabulary tiles): file under
# benchmarks/results/ -> (plan, overrides).
RECORDED = {
    "2026-12-03/estimate_target_llama3.1-8b_tpu-v5p-2x2x1_gbs4.json": ("llama3.1-8b", ["data.global_batch_size=4"]),
    "2026-12-03/estimate_target_llama3.1-8b_tpu-v5p-2x2x1_gbs16.json": ("llama3.1-8b", ["data.global_batch_size=16"]),
    "2026-12-03/estimate_target_llama3.1-8b_tpu-v5p-2x2x4_gbs64.json": ("llama3.1-8b", ["data.global_batch_size=64"]),
    "2026-12-03/estimate_target_llama3.1-70b_tpu-v5p-2x2x4_gbs16.json": ("llama3.1-70b", ["data.global_batch_size=16"]),
    "2026-12-03/estimate_target_llama3.1-8b_tpu-v6e-4x4_gbs16.json": ("llama3.1-8b", ["data.global_batch_size=16"]),
    "2026-12-03/estimate_target_llama3.1-8b_h100x64.json": ("llama3.1-8b", []),
    "2026-12-03/estimate_target_qwen2.5-7b_h100x64.json": ("qwen2.5-7b", []),
    "2026-12-03/estimate_target_llama3.1-70b_h100x64.json": ("llama3.1-70b", []),
    "2026-12-03/estimate_target_llama3.1-70b_h100x64_grad_accum4.json": ("llama3.1-70b", ["optimizer.grad_accum=4"]),
    # 256 chips, compiled by the vocabulary-tiled head's branch (RESULTS.md §8a)
    "2026-12-02/estimate_target_llama3.1-70b_tpu-v5p-4x8x8_vocab_tiles.json": ("llama3.1-70b", []),
}


@pytest.mark.parametrize("name", list(RECORDED))
def test_analytic_peak_within_15_percent_of_the_compiled_peak(name):
    """The analytic model against the TPU and GPU compilers' peaks at the real shapes."""
    recorded = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
    plan, overrides = RECORDED[name]
    cfg = load_run_config(ROOT / "configs" / "estimate" / f"{plan}.yaml", overrides)
    target = recorded["target"]
    r = estimate_plan(cfg, target=target["name"], slices=target["slices"], compile=False)
    compiled = recorded["compiled"]
    assert r["analytic"]["params"] == compiled["params"] and r["analytic"]["opt_state"] == compiled["opt_state"]
    assert r["analytic"]["peak"] == pytest.approx(compiled["peak"], rel=0.15)
