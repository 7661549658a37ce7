"""The plan's real train step on abstract inputs: the run's own `build_setup` (the Trainer's
jitted step, state shardings and batch sharding), lowered and compiled without allocating a
parameter and without reading data."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from cpt_jax.data.config import SourceConfig
from cpt_jax.data.pipeline import BATCH_KEYS
from cpt_jax.estimate.breakdown import dump_options, largest_buffers
from cpt_jax.train.config import RunConfig
from cpt_jax.train.setup import RunSetup, build_setup
from cpt_jax.train.state import TrainState


def without_data(cfg: RunConfig) -> RunConfig:
    """The plan with every source replaced by a tiny synthetic one of the same name: the step
    depends on the batch shape only, so an estimate needs neither the data nor the tokenizer."""
    sources = {name: SourceConfig(kind="synthetic", num_docs=8, eval_docs=1) for name in cfg.data.sources}
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sources=sources, workers=0), tokenizer="")


def abstract_inputs(setup: RunSetup) -> tuple[TrainState, dict]:
    """(train state, batch) as ShapeDtypeStructs on the run's shardings."""
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=setup.shardings.step),
                       params=setup.abstract_params, opt_state=setup.abstract_opt,
                       ema=setup.abstract_params if setup.shardings.ema is not None else None)  # weight EMA
    shape = (setup.cfg.data.global_batch_size, setup.cfg.data.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=setup.batch_sharding) for k in BATCH_KEYS}
    return state, batch


def memory_stats(compiled) -> dict[str, int]:
    """Per-device byte counts of XLA's buffer assignment for the compiled (partitioned) program."""
    m = compiled.memory_analysis()
    return {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
            "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
            "code": int(m.generated_code_size_in_bytes)}


def compile_step(cfg: RunConfig, mesh: Mesh, phase: int = 0, compiler_options: dict | None = None,
                 breakdown: int = 0) -> dict:
    """Lower and compile phase `phase`'s train step; per-device memory, XLA's FLOP count (and the
    TPU compiler's `optimal_seconds`), timings. An out-of-memory verdict of the compiler (TPU:
    RESOURCE_EXHAUSTED) is returned as {"oom": message}, not raised. `breakdown` > 0 adds that
    many of the program's largest buffers, attributed (breakdown.py)."""
    setup = build_setup(without_data(cfg), mesh, phase=phase)
    state, batch = abstract_inputs(setup)
    t0 = time.perf_counter()
    lowered = setup.train_step.lower(state, batch)
    t1 = time.perf_counter()
    options = dict(compiler_options or {})
    dump = tempfile.TemporaryDirectory(prefix="cpt_jax_breakdown_") if breakdown else None
    if dump:
        options.update(dump_options(dump.name))
    try:
        compiled = lowered.compile(options or None)
    except Exception as e:  # jax raises JaxRuntimeError; only the compiler's memory verdict is an answer
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        if dump:
            dump.cleanup()
        return {"oom": str(e).strip().splitlines()[0], "lower_s": t1 - t0,
                "compile_s": time.perf_counter() - t1}
    t2 = time.perf_counter()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    state_in, batch_in = compiled.input_shardings[0]
    split = {"params": input_bytes(state.params, state_in.params),
             "opt_state": input_bytes(state.opt_state, state_in.opt_state),
             "batch": input_bytes(batch, batch_in)}
    memory = memory_stats(compiled)
    out = {"memory": memory, **split, "peak": peak_bytes(memory),
           "flops": (cost or {}).get("flops"),  # None where the compiler has no cost model (GPU)
           "optimal_seconds": (cost or {}).get("optimal_seconds"), "lower_s": t1 - t0, "compile_s": t2 - t1}
    if dump:
        with dump:
            shapes = param_shapes(state.params, setup.cfg.model.scan_layers)
            out["breakdown"] = largest_buffers(dump.name, breakdown, shapes, vocab_sizes(setup))
    return out


def param_shapes(params, scanned: bool) -> set[tuple[int, ...]]:
    """Every parameter's shape, whole and as one device's shard (a gathered weight, a gradient
    before its reduce-scatter, a shard), and one layer's slice of the stacked layers when they
    are scanned: what a parameter-shaped buffer can look like."""
    out = set()
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        shapes = {tuple(x.shape), tuple(x.sharding.shard_shape(x.shape))}
        if scanned and "layers" in jax.tree_util.keystr(path):
            shapes |= {s[1:] for s in shapes}
        out |= shapes
    return out


def vocab_sizes(setup: RunSetup) -> set[int]:
    """The vocabulary dimension of logits, whole and split over the tensor axis."""
    v = setup.cfg.model.vocab_size
    return {v, math.ceil(v / setup.mesh.shape["tensor"])}


def peak_bytes(memory: dict[str, int]) -> int:
    """Per-device bytes live at the step's peak: inputs, outputs not written over their inputs
    (the state is donated), and XLA's temporaries."""
    return memory["arguments"] + memory["temporaries"] + memory["outputs"] - memory["aliased"]


def input_bytes(abstract, shardings) -> int:
    """Per-device bytes of inputs under the shardings the compiled program takes them in (None:
    an input the step never reads, which XLA drops)."""
    treedef = jax.tree.structure(abstract)
    pairs = zip(treedef.flatten_up_to(abstract), treedef.flatten_up_to(shardings), strict=True)
    return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize for x, s in pairs if s is not None)
