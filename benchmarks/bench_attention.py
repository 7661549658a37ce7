"""The attention core alone, forward and forward+backward: cpt_jax's implementations against torch's.

    python benchmarks/bench_attention.py --out attention.json      # B=8, L=512, 4 heads of 64, fp32
    python benchmarks/bench_attention.py --out a.json --seq 2048 --dtype bfloat16   # on a GPU / TPU

One layer's attention, no projections: jax's `dot_product_attention` (XLA, dense mask) and the
blocked attention of cpt_jax/model/attention.py, both jitted, against torch's
`scaled_dot_product_attention(is_causal=True)` (its CPU flash kernel) on the same arrays.
On a GPU the default paths are xla, cudnn and pallas_gpu; on a TPU xla and splash (--impls).
Medians of --reps calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cpt_jax.model.attention import attend  # noqa: E402
from common import environment, usable_cores, write_json  # noqa: E402


DEFAULT_IMPLS = {"cpu": "xla,blocked", "gpu": "xla,cudnn,pallas_gpu", "tpu": "xla,splash"}


def median_ms(fn, reps: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--no-torch", dest="torch", action="store_false")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--impls", default=None, help="comma-separated attention paths (default: per platform)")
    args = p.parse_args()
    impls = (args.impls or DEFAULT_IMPLS.get(jax.default_backend(), "xla")).split(",")
    args.torch = args.torch and jax.default_backend() == "cpu"
    shape = (args.batch, args.seq, args.heads, args.head_dim)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal(shape), args.dtype) for _ in range(3))
    segments = jnp.ones(shape[:2], jnp.int32)
    rows = {}
    for impl in impls:
        fwd = jax.jit(lambda q, k, v, impl=impl: attend(q, k, v, segments, impl))
        grad = jax.jit(jax.grad(lambda q, k, v, impl=impl: jnp.sum(attend(q, k, v, segments, impl).astype(jnp.float32)),
                               (0, 1, 2)))
        rows[f"cpt_jax {impl}"] = {"fwd_ms": median_ms(lambda: fwd(q, k, v), args.reps),
                                   "fwd_bwd_ms": median_ms(lambda: grad(q, k, v), args.reps)}
    if args.torch:
        import torch
        torch.set_num_threads(usable_cores())
        tq, tk, tv = (torch.tensor(np.asarray(x)).transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def fwd_bwd():
            sdpa(tq, tk, tv, is_causal=True).sum().backward()

        def fwd():
            with torch.no_grad():
                sdpa(tq, tk, tv, is_causal=True)

        rows["torch sdpa is_causal"] = {"fwd_ms": median_ms(fwd, args.reps),
                                        "fwd_bwd_ms": median_ms(fwd_bwd, args.reps)}
    for name, row in rows.items():
        print(f"{name:22s} fwd {row['fwd_ms']:7.1f} ms   fwd+bwd {row['fwd_bwd_ms']:7.1f} ms", file=sys.stderr)
    write_json(args.out, {"bench": "attention", "environment": environment(), "shape_blhd": shape,
                          "reps": args.reps, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
