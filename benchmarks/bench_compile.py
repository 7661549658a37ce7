"""Compile time and program size of the train step against depth, scanned vs unrolled layers.

    python benchmarks/bench_compile.py --out results/compile.json
    python benchmarks/bench_compile.py --layers 2,8,32 --reps 2 --out results/compile.json
    python benchmarks/bench_compile.py --layers 2 --reps 1 --step-sizes tiny:128,small:256 --out F

The step is cpt_jax's own (make_train_step + jit_train_step: AdamW, clipping, donated state) on a
one-device mesh, lowered from abstract shapes (nothing is allocated) at a tiny width, so the
numbers are about the program's structure, not its arithmetic. Per (layers, scan_layers):
StableHLO lines and `dot_general` ops of the lowered step, XLA's compile time (lowered.compile(),
the best of --reps fresh traces and compiles; jax's persistent compilation cache is off) and
tracing + lowering time (best of --reps). The issue's
target: with scanning, 32 layers compile in at most 1.5x the time of 2. "Scanned" is the loop
(`scan_unroll: 1`) at every depth; by default models of up to 4 layers run it unrolled.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import optax
from common import environment, write_json

from cpt_jax.model.config import ModelConfig
from cpt_jax.model.params import abstract_model, abstract_params, param_shardings
from cpt_jax.sharding import MeshConfig, make_mesh
from cpt_jax.train.optimizer import OptimizerConfig, make_optimizer
from cpt_jax.train.state import TrainState, train_state_shardings
from cpt_jax.train.step import jit_train_step, make_train_step

TINY = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=172, num_layers=2, num_heads=4,
                   num_kv_heads=2, max_position_embeddings=256)


def lowered_step(cfg: ModelConfig, batch: int, seq: int):
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    graphdef, _ = abstract_model(cfg, mesh)
    opt_cfg = OptimizerConfig()
    tx = make_optimizer(opt_cfg)
    params = abstract_params(cfg)
    shardings = train_state_shardings(tx, param_shardings(cfg, mesh), params, mesh)
    state = TrainState(step=jax.ShapeDtypeStruct((), jax.numpy.int32), params=params,
                       opt_state=jax.eval_shape(tx.init, params))
    tokens = jax.ShapeDtypeStruct((batch, seq), jax.numpy.int32)
    step = jit_train_step(make_train_step(graphdef, tx, optax.constant_schedule(1e-4), opt_cfg, mesh),
                          shardings, mesh)
    return step.lower(state, {"tokens": tokens, "segment_ids": tokens, "positions": tokens})


def measure(cfg: ModelConfig, batch: int, seq: int, reps: int) -> dict:
    """Each repetition traces and lowers a new jit object, so no in-memory cache serves it."""
    lower_s, compile_s = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        lowered = lowered_step(cfg, batch, seq)
        lower_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        lowered.compile()
        compile_s.append(time.perf_counter() - t0)
    text = lowered.as_text()
    return {"layers": cfg.num_layers, "scan_layers": cfg.scan_layers, "stablehlo_lines": text.count("\n"),
            "dot_ops": text.count("stablehlo.dot_general"), "lower_s": min(lower_s), "compile_s": min(compile_s),
            "compile_s_all": compile_s}


def step_times(size: str, seq: int, reps: int) -> dict:
    """Train-step time of bench_step.py's model `size`, scanned vs unrolled, in one process with
    alternating repetitions (3 steps each) so that load from other processes lands on both."""
    import statistics

    import bench_step

    steps = {}
    for scan in (False, True):
        model = ModelConfig(**bench_step.SIZES[size], max_position_embeddings=4096, scan_layers=scan, scan_unroll=1)
        case = bench_step.Case(size, model, seq, bench_step.DEFAULT_BATCH[size])
        steps[scan] = bench_step.JaxStep(case, bench_step.make_batch(case))
        steps[scan].run(2)
    times: dict = {False: [], True: []}
    for _ in range(reps):
        for scan in (False, True):
            t0 = time.perf_counter()
            steps[scan].run(3)
            times[scan].append((time.perf_counter() - t0) / 3)
    return {"size": size, "seq": seq, "batch": bench_step.DEFAULT_BATCH[size],
            **{f"{'scanned' if scan else 'unrolled'}_ms": 1000 * statistics.median(t) for scan, t in times.items()},
            **{f"{'scanned' if scan else 'unrolled'}_ms_all": [1000 * x for x in t] for scan, t in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="2,8,32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--step-sizes", default="", help="also time the step of these bench_step.py sizes, "
                    "e.g. tiny:128,small:256 (size:seq), scanned vs unrolled")
    ap.add_argument("--step-reps", type=int, default=8)
    args = ap.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    measure(TINY, args.batch, args.seq, 1)  # warm-up: the first compile of a process pays one-off costs
    rows = []
    for scan in (True, False):
        for n in (int(x) for x in args.layers.split(",")):
            row = measure(dataclasses.replace(TINY, num_layers=n, scan_layers=scan, scan_unroll=1), args.batch, args.seq,
                          args.reps)
            rows.append(row)
            print(f"layers {n:3d} scan {scan!s:5s}: {row['stablehlo_lines']:6d} StableHLO lines, "
                  f"{row['dot_ops']:4d} dot ops, lower {row['lower_s']:.2f} s, compile {row['compile_s']:.2f} s",
                  flush=True)
    ratio = {}
    for scan in (True, False):
        by = {r["layers"]: r["compile_s"] for r in rows if r["scan_layers"] == scan}
        ratio[str(scan)] = by[max(by)] / by[min(by)]
    print(f"compile time deepest/shallowest: scanned {ratio['True']:.2f}x, unrolled {ratio['False']:.2f}x "
          "(target for scanned: <= 1.5x)")
    steps = []
    for item in filter(None, args.step_sizes.split(",")):
        size, seq = item.split(":")
        steps.append(step_times(size, int(seq), args.step_reps))
        print(f"step {size} seq {seq}: scanned {steps[-1]['scanned_ms']:.1f} ms, unrolled "
              f"{steps[-1]['unrolled_ms']:.1f} ms (medians)", flush=True)
    write_json(args.out, {"bench": "compile", "env": environment(), "model": dataclasses.asdict(TINY),
                          "batch": args.batch, "seq": args.seq, "rows": rows, "compile_ratio": ratio,
                          "step_times": steps})


if __name__ == "__main__":
    main()
