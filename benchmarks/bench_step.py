"""Train-step throughput and MFU on one device: cpt_jax against the same step in transformers + torch.

    python benchmarks/bench_step.py --out results/step.json                 # CPU: tiny/small/medium
    python benchmarks/bench_step.py --out results/step.json --sizes tiny --seq 128 --reps 3
    python benchmarks/bench_step.py --out results/step_gpu.json              # on a GPU: Llama-3.2-1B shape,
                                                                              # bf16, seq 2048, remat dots

cpt_jax side: the project's own train step (make_train_step + jit_train_step: AdamW, global-norm
clip 1.0, donated state) on a one-device mesh. Baseline (CPU only): `LlamaForCausalLM` built
from a `LlamaConfig` with the same dims (no download, the `sdpa` attention transformers picks by
default), `torch.optim.AdamW`, loss on the next token, `loss.backward(); clip_grad_norm_;
opt.step(); zero_grad()`. Same shape, batch, sequence length, dtype and thread budget, in the
same process; the repetitions of the two alternate so that load from other users of a shared
host lands on both. Times are medians over repetitions after warm-up; JAX compile time is
reported separately.

Host memory: as `cpt-jax train` does by default (keep_host_memory), the process's glibc malloc
keeps freed memory before JAX starts (cpt_jax/host_memory.py; `--host-memory system` to compare).
The setting is process-wide, so the torch baseline runs under it too.

MFU = tokens/s x ModelConfig.flops_per_token(seq_len) / peak, where flops_per_token is the
standard count 6 N_non-embedding + 12 n_layers seq_len d_attn. Peak: on GPU/TPU the vendor's
dense bf16 figure (cpt_jax.train.mfu.device_peak_flops); on CPU the best measured rate of a
large fp32 matmul (jax and torch, both measured in this run, the higher one counts).
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import itertools
import json
import linecache
import math
import os
import re
import resource
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cpt_jax.host_memory import KEEP_SETTINGS, is_glibc, set_malloc_options  # noqa: E402
from cpt_jax.model.config import ModelConfig, RopeScalingConfig  # noqa: E402
from cpt_jax.train.optimizer import OptimizerConfig  # noqa: E402
from cpt_jax.sharding import MeshConfig, make_mesh  # noqa: E402
from cpt_jax.train.mfu import device_peak_flops, measured_matmul_flops  # noqa: E402
from cpt_jax.model.params import abstract_model, init_params  # noqa: E402
from cpt_jax.sharding.placement import batch_sharding  # noqa: E402
from cpt_jax.train.optimizer import make_optimizer  # noqa: E402
from cpt_jax.train.state import new_train_state, train_state_shardings  # noqa: E402
from cpt_jax.train.step import jit_train_step, make_train_step  # noqa: E402
from common import environment, usable_cores, write_json  # noqa: E402

LR = 1e-4
# Head dim 64 everywhere; SwiGLU width ~8/3 d rounded up to a multiple of 64 (the Llama recipe).
SIZES = {
    "tiny": dict(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=2),
    "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=4),
    "medium": dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_layers=4, num_heads=8),
    # Llama-3.2-1B: GQA 32/8, tied embeddings, llama3 RoPE scaling (shape only, no weights).
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                     num_kv_heads=8, rope_theta=500000.0, tie_embeddings=True, max_position_embeddings=131072,
                     rope_scaling=RopeScalingConfig(factor=32.0), rms_norm_eps=1e-5),
}
DEFAULT_BATCH = {"tiny": 8, "small": 8, "medium": 8, "llama-1b": 4}
CPU_DEFAULTS = dict(sizes="tiny,small,medium", seq="128,256", remat="none", attention="auto", dtype="float32")
# Every GPU attention path: the Pallas flash kernel ("auto" on GPU), cuDNN and XLA (dense [L, L] mask).
ACCEL_DEFAULTS = dict(sizes="llama-1b", seq="2048", remat="dots", attention="pallas_gpu,cudnn,xla", dtype="bfloat16")


@dataclass(frozen=True)
class Case:
    size: str
    model: ModelConfig
    seq_len: int
    batch: int

    @property
    def name(self) -> str:
        extra = "" if self.model.remat == "none" else f" remat={self.model.remat}"
        extra += "" if self.model.attention == "auto" else f" attn={self.model.attention}"
        return f"{self.size} L={self.seq_len} B={self.batch} {self.model.dtype}{extra}"

    @property
    def tokens(self) -> int:
        return self.seq_len * self.batch

    def flops_per_token(self, with_head: bool = False) -> float:
        """The standard count; with_head adds the LM-head matmul (6 d V), which dominates small
        models and which the standard count leaves out."""
        head = 6.0 * self.model.hidden_size * self.model.vocab_size if with_head else 0.0
        return self.model.flops_per_token(self.seq_len) + head


def make_batch(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    """One unpacked document per row: the torch baseline sees the same causal attention."""
    rng = np.random.default_rng(seed)
    shape = (case.batch, case.seq_len)
    return {"tokens": rng.integers(0, case.model.vocab_size, shape, dtype=np.int32),
            "segment_ids": np.ones(shape, np.int32),
            "positions": np.broadcast_to(np.arange(case.seq_len, dtype=np.int32), shape).copy()}


class JaxStep:
    """cpt_jax's train step exactly as the trainer builds it, on a one-device mesh."""

    framework = "cpt_jax"

    def __init__(self, case: Case, batch: dict[str, np.ndarray]):
        cfg = case.model
        mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
        graphdef, _ = abstract_model(cfg, mesh)
        params = init_params(cfg, mesh, seed=0)
        opt_cfg = OptimizerConfig()
        tx = make_optimizer(opt_cfg)
        shardings = jax.tree.map(lambda x: x.sharding, params)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        st_sh = train_state_shardings(tx, shardings, abstract, mesh)
        self.state = new_train_state(tx, params, st_sh)
        self.batch = jax.device_put(batch, batch_sharding(mesh))
        step = jit_train_step(make_train_step(graphdef, tx, optax.constant_schedule(LR), opt_cfg, mesh), st_sh, mesh)
        t0 = time.perf_counter()
        self.compiled = step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t0
        self.info = {"compile_s": self.compile_s, **_xla_costs(self.compiled)}

    def run(self, steps: int) -> float:
        for _ in range(steps):
            self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        return float(metrics["loss"])


def _xla_costs(compiled) -> dict:
    """XLA's own FLOP count and memory plan: evidence when the formula and the measurement disagree."""
    out = {}
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        out["xla_flops_per_step"] = float(cost.get("flops", float("nan")))
    except Exception:  # noqa: BLE001 - optional diagnostics, not all backends implement it
        pass
    try:
        mem = compiled.memory_analysis()
        out["xla_temp_bytes"] = int(mem.temp_size_in_bytes)
        out["xla_argument_bytes"] = int(mem.argument_size_in_bytes)
    except Exception:  # noqa: BLE001
        pass
    return out


class TorchStep:
    """The same step as a user would write it with transformers + torch on CPU."""

    framework = "torch"

    def __init__(self, case: Case, batch: dict[str, np.ndarray], threads: int):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from cpt_jax.hf.config_map import model_config_to_hf_config

        if case.model.dtype != "float32":
            raise ValueError("the torch baseline runs on CPU in fp32 only")
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        hf = LlamaConfig(**model_config_to_hf_config(case.model), attn_implementation="sdpa")
        self.torch = torch
        self.model = LlamaForCausalLM(hf).float().train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        self.ids = torch.from_numpy(batch["tokens"]).long()
        self.info = {"threads": torch.get_num_threads(), "attn_implementation": self.model.config._attn_implementation}

    def run(self, steps: int) -> float:
        torch = self.torch
        for _ in range(steps):
            loss = self.model(input_ids=self.ids, labels=self.ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def xla_worker_threads() -> int:
    """XLA:CPU's intra-op pool threads alive in this process (named tf_XLAEigen on Linux)."""
    try:
        return sum(Path(f"/proc/self/task/{t}/comm").read_text().strip() == "tf_XLAEigen"
                   for t in os.listdir("/proc/self/task"))
    except OSError:
        return -1


def torch_matmul_flops(n: int, reps: int, threads: int) -> float:
    import torch
    torch.set_num_threads(threads)
    a = torch.ones((n, n), dtype=torch.float32)
    a @ a
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def measure_peak(accelerator: bool, with_torch: bool, threads: int, n: int) -> dict:
    if accelerator:
        peak, source = device_peak_flops()
        return {"peak_flops": peak, "source": source}
    rates = {"jax_matmul_flops": measured_matmul_flops(n=n, reps=5)}
    if with_torch:
        rates["torch_matmul_flops"] = torch_matmul_flops(n, 5, threads)
    return {**rates, "peak_flops": max(rates.values()),
            "source": f"measured fp32 {n}x{n}x{n} matmul on this host in this run (best of 5; higher of jax/torch)"}


def _host_busy_s() -> float:
    """CPU seconds the whole host has been busy (steal included: time the hypervisor took)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, share of the host's CPU that other processes used meanwhile, fn's result):
    on a shared host the second number says how much a measurement was disturbed."""
    busy0, own0, t0 = _host_busy_s(), _own_cpu_s(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    foreign = (_host_busy_s() - busy0) - (_own_cpu_s() - own0)
    return wall, max(0.0, foreign) / (wall * (os.cpu_count() or 1)), result


def timed_reps(runners: list, args) -> dict[str, dict]:
    """Warm up each runner, size a repetition to >= min_rep_s, then alternate the runners' reps.

    A rep during which other processes took more than --max-foreign of the host's CPU is run
    again (at most --retries times) and the least disturbed attempt is kept: torch's OpenMP
    barriers in particular slow down many-fold when a co-tenant takes one of a few cores.
    """
    out = {}
    for r in runners:
        t0 = time.perf_counter()
        loss0 = r.run(1)
        first = time.perf_counter() - t0
        warm = first  # with a single warm-up step, the first (compiling) step sizes the reps
        if args.warmup > 1:
            t0 = time.perf_counter()
            r.run(args.warmup - 1)
            warm = (time.perf_counter() - t0) / (args.warmup - 1)
        out[r.framework] = {"first_step_s": first, "initial_loss": loss0, "rep_s": [], "rep_foreign_cpu": [],
                            "retries": 0, "steps_per_rep": max(1, math.ceil(args.min_rep_s / max(warm, 1e-6)))}
    for i in range(args.reps):
        for r in (runners if i % 2 == 0 else runners[::-1]):
            m = out[r.framework]
            rep = functools.partial(r.run, m["steps_per_rep"])
            attempts = []
            for _ in range(1 + args.retries):
                attempts.append(timed(rep))
                if attempts[-1][1] <= args.max_foreign:
                    break
            m["retries"] += len(attempts) - 1
            m["final_loss"] = attempts[-1][2]
            wall, foreign, _ = min(attempts, key=lambda a: a[1])
            m["rep_s"].append(wall / m["steps_per_rep"])
            m["rep_foreign_cpu"].append(foreign)
    return out


def run_case(case: Case, args, threads: int) -> dict:
    batch = make_batch(case)
    row = {"name": case.name, "size": case.size, "seq_len": case.seq_len, "batch": case.batch,
           "dtype": case.model.dtype, "remat": case.model.remat, "attention": case.model.attention,
           "params": case.model.num_params(), "params_non_embedding": case.model.num_params(False),
           "flops_per_token": case.flops_per_token(), "flops_per_token_with_head": case.flops_per_token(True)}
    runners = []
    try:
        jx = JaxStep(case, batch)
        runners.append(jx)
        if args.torch:
            runners.append(TorchStep(case, batch, threads))
        times = timed_reps(runners, args)
    except Exception as e:  # noqa: BLE001 - one failing case (e.g. out of memory) must not lose the others
        traceback.print_exc()
        row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        return row
    for r in runners:
        m = times[r.framework]
        step_s = statistics.median(m["rep_s"])
        tps = case.tokens / step_s
        key = "jax" if r.framework == "cpt_jax" else "torch"
        row[key] = {**r.info, **m, "step_s": step_s, "tokens_per_s": tps}
        if r.framework == "cpt_jax" and "xla_flops_per_step" in r.info:
            row[key]["xla_flops_per_token"] = r.info["xla_flops_per_step"] / case.tokens
    if "torch" in row:
        j, t = row["jax"]["rep_s"], row["torch"]["rep_s"]
        row["ratio_jax_over_torch"] = row["jax"]["tokens_per_s"] / row["torch"]["tokens_per_s"]
        row["ratio_paired_median"] = statistics.median(b / a for a, b in zip(j, t))
        # Reps where neither framework shared the host with others beyond --max-foreign: the
        # comparison on a quiet machine (torch's OpenMP loses most when a co-tenant takes a core).
        quiet = [(a, b) for a, b, fa, fb in zip(j, t, row["jax"]["rep_foreign_cpu"], row["torch"]["rep_foreign_cpu"])
                 if max(fa, fb) <= args.max_foreign]
        row["quiet_reps"] = len(quiet)
        if quiet:
            row["quiet_ratio_jax_over_torch"] = statistics.median(b / a for a, b in quiet)
    return row


def add_mfu(rows: list[dict], peak: float) -> None:
    for row in rows:
        for key in ("jax", "torch"):
            if key in row:
                tps = row[key]["tokens_per_s"]
                row[key]["mfu"] = tps * row["flops_per_token"] / peak
                row[key]["mfu_with_head"] = tps * row["flops_per_token_with_head"] / peak


def _hlo_tables(hlo: str) -> tuple[dict, dict]:
    """The source-location tables XLA prints above the module: stack frame id -> (file, function,
    line) chain, innermost first; and instruction name -> (stack frame id, is backward pass, output shape)."""
    tables, section = collections.defaultdict(dict), None
    for line in hlo.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        m = re.match(r"^(\d+) (.*)$", line) if section else None
        if not m:
            section = None if section and line.strip() == "" else section
            continue
        tables[section][int(m.group(1))] = m.group(2)
    ints = lambda text: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}  # noqa: E731
    locs = {i: ints(v) for i, v in tables["FileLocations"].items()}
    frames = {i: ints(v) for i, v in tables["StackFrames"].items()}

    def chain(fid):
        out, seen = [], set()
        while fid in frames and fid not in seen:
            seen.add(fid)
            loc = locs[frames[fid]["file_location_id"]]
            out.append((tables["FileNames"][loc["file_name_id"]].strip('"'),
                        tables["FunctionNames"][loc["function_name_id"]].strip('"'), loc["line"]))
            fid = frames[fid]["parent_frame_id"]
        return out

    instrs = {}
    pattern = r"%([\w.\-]+) = (\S+?)(?:\{[\d,]*\})? [^\n]*?metadata=\{op_name=\"([^\"]*)\"[^}]*?stack_frame_id=(\d+)"
    for m in re.finditer(pattern, hlo):
        instrs[m.group(1)] = (int(m.group(4)), "transpose(" in m.group(3), m.group(2))
    return {fid: chain(fid) for fid in frames}, instrs


def _source_label(chain: list[tuple[str, str, int]]) -> str:
    """The innermost frame in cpt_jax or optax: the line of our code (or the optimizer) that
    produced the op."""
    for path, func, line in chain:
        if "/cpt_jax/" in path or "/optax/" in path:
            short = path.split("/cpt_jax/")[-1] if "/cpt_jax/" in path else "optax/" + path.split("/optax/")[-1]
            src = linecache.getline(path, line).strip()[:70]
            return f"{short}:{line} {func}: {src}"
    return "(no source: XLA-inserted copies, parameters)"


def profile_jax(runner: JaxStep, steps: int, trace_dir: str) -> dict:
    """Per-source-line time of cpt_jax's step from a jax.profiler trace.

    XLA:CPU emits one trace event per executed thunk (a fusion, a dot, a copy), named after its
    HLO instruction; the optimised HLO maps each instruction to the Python line that produced it.
    Thunks may run concurrently, so shares are of the summed thunk time, next to the wall time.
    """
    runner.run(1)
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        runner.run(steps)
    wall = (time.perf_counter() - t0) / steps
    files = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(max(files, key=os.path.getmtime)) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_op = collections.Counter()
    for e in events:
        op = (e.get("args") or {}).get("hlo_op")
        if e.get("ph") == "X" and op and not e["name"].startswith("end:"):
            per_op[op] += e.get("dur", 0.0) / 1e6 / steps
    chains, instrs = _hlo_tables(runner.compiled.as_text())
    by_line, by_pass = collections.Counter(), collections.Counter()
    thunks = collections.defaultdict(list)
    for op, sec in per_op.items():
        fid, backward, shape = instrs.get(op, (None, False, "?"))
        label = _source_label(chains.get(fid, []))
        by_line[label] += sec
        by_pass["backward" if backward else "forward+optimizer"] += sec
        thunks[label].append({"op": op, "s": sec, "shape": shape, "pass": "bwd" if backward else "fwd"})
    total = sum(per_op.values())
    return {"wall_s_per_step": wall, "thunk_s_per_step": total, "by_pass": dict(by_pass),
            "by_source_line": [{"s": s, "share": s / total, "source": k,
                                "top_thunks": sorted(thunks[k], key=lambda t: -t["s"])[:4]}
                               for k, s in by_line.most_common(25)]}


def profile_torch(runner: TorchStep, steps: int) -> dict:
    """Self CPU time per aten op of the baseline, for the same case (what torch spends on)."""
    from torch.profiler import profile
    runner.run(1)
    t0 = time.perf_counter()
    with profile() as prof:
        runner.run(steps)
    wall = (time.perf_counter() - t0) / steps
    ops = [(e.key, e.self_cpu_time_total / 1e6 / steps) for e in prof.key_averages()]
    total = sum(s for _, s in ops)
    return {"wall_s_per_step": wall, "self_cpu_s_per_step": total,
            "top_ops": [{"s": s, "share": s / total, "op": k} for k, s in sorted(ops, key=lambda x: -x[1])[:15]]}


def run_profile(case: Case, args, threads: int) -> dict:
    batch = make_batch(case)
    jx = JaxStep(case, batch)
    out = {"name": case.name, "jax": profile_jax(jx, args.profile_steps, os.path.join(args.profile, "jax"))}
    del jx
    if args.torch:
        out["torch"] = profile_torch(TorchStep(case, batch, threads), args.profile_steps)
    return out


def build_cases(args, accelerator: bool) -> list[Case]:
    cases = []
    for size in args.sizes.split(","):
        if size not in SIZES:
            raise SystemExit(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
        for seq in (int(s) for s in args.seq.split(",")):
            for remat, attention in itertools.product(args.remat.split(","), args.attention.split(",")):
                base = ModelConfig(**SIZES[size])
                model = replace(base, dtype=args.dtype, remat=remat, attention=attention, param_dtype="float32",
                                max_position_embeddings=max(base.max_position_embeddings, seq))
                model.validate("model")
                cases.append(Case(size, model, seq, args.batch or DEFAULT_BATCH[size]))
    return cases


def print_profile(prof: dict) -> None:
    j = prof["jax"]
    print(f"cpt_jax {prof['name']}: wall {j['wall_s_per_step']:.3f} s/step, thunks {j['thunk_s_per_step']:.3f} s/step, "
          f"by pass {({k: round(v, 3) for k, v in j['by_pass'].items()})}", file=sys.stderr)
    for row in j["by_source_line"]:
        print(f"  {row['s']:7.3f} s {100 * row['share']:5.1f}%  {row['source']}", file=sys.stderr)
    if "torch" in prof:
        t = prof["torch"]
        print(f"torch: wall {t['wall_s_per_step']:.3f} s/step", file=sys.stderr)
        for row in t["top_ops"]:
            print(f"  {row['s']:7.3f} s {100 * row['share']:5.1f}%  {row['op']}", file=sys.stderr)


def parse_args() -> argparse.Namespace:
    """Per-backend defaults are filled in by `backend_defaults`: the backend cannot be asked
    before the host-memory setting is applied."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write the results to")
    p.add_argument("--sizes", help=f"comma-separated, from {', '.join(SIZES)}")
    p.add_argument("--seq", help="comma-separated sequence lengths")
    p.add_argument("--batch", type=int, default=0, help="rows per step (0: per-size default)")
    p.add_argument("--remat", help="comma-separated: none, full, dots, dots_no_batch")
    p.add_argument("--attention", help="comma-separated: auto, blocked, xla, cudnn, splash, pallas_gpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per framework")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--max-foreign", type=float, default=0.15,
                   help="rerun a rep if other processes took more than this share of the host's CPU")
    p.add_argument("--retries", type=int, default=2, help="reruns allowed per disturbed rep")
    p.add_argument("--min-rep-s", type=float, default=0.5, help="a repetition runs whole steps for at least this")
    p.add_argument("--matmul-n", type=int, default=2048, help="size of the CPU peak-rate matmul")
    p.add_argument("--no-torch", dest="torch", action="store_false", help="skip the transformers baseline")
    p.add_argument("--profile", default="", help="instead of timing: profile the first case, traces into this dir")
    p.add_argument("--profile-steps", type=int, default=3, help="steps in the profiled window")
    p.add_argument("--host-memory", default="keep", choices=["keep", "system"],
                   help="keep (default, as `cpt-jax train` with keep_host_memory): glibc keeps freed memory; "
                        "system: glibc's defaults. Process-wide, so torch runs under the same setting")
    return p.parse_args()


def backend_defaults(args: argparse.Namespace, accelerator: bool) -> argparse.Namespace:
    d = ACCEL_DEFAULTS if accelerator else CPU_DEFAULTS
    for key, value in d.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if accelerator and args.torch:
        args.torch = False  # the baseline is the CPU torch build; on an accelerator only cpt_jax runs
    return args


def main() -> int:
    args = parse_args()
    # Before jax.default_backend() starts XLA's threads, as the trainer does (cpt_jax/host_memory.py).
    kept = args.host_memory == "keep" and is_glibc() and set_malloc_options(KEEP_SETTINGS)
    accelerator = jax.default_backend() != "cpu"
    args = backend_defaults(args, accelerator)
    threads = usable_cores()
    t0 = time.perf_counter()
    env = {**environment(), "host_memory_kept": kept}
    cases = build_cases(args, accelerator)
    if args.profile:
        result = {"bench": "step-profile", "environment": env, "profile": run_profile(cases[0], args, threads)}
        write_json(args.out, result)
        print_profile(result["profile"])
        return 0
    peak = measure_peak(accelerator, args.torch, threads, args.matmul_n)
    rows = []
    for i, case in enumerate(cases):
        print(f"[{i + 1}/{len(cases)}] {case.name}", file=sys.stderr, flush=True)
        row = run_case(case, args, threads)
        rows.append(row)
        # The cases so far, marked incomplete, so a run cut short (time limit) still leaves its numbers.
        write_json(args.out + ".partial", {"bench": "step", "complete": False, "environment": env,
                                           "peak_at_start": peak, "cases": rows})
        if "jax" in row:
            msg = f"  cpt_jax {row['jax']['tokens_per_s']:,.0f} tok/s compile {row['jax']['compile_s']:.1f} s"
            if "torch" in row:
                msg += f" | torch {row['torch']['tokens_per_s']:,.0f} tok/s | ratio {row['ratio_jax_over_torch']:.2f}"
            print(msg, file=sys.stderr, flush=True)
    if not accelerator:  # the host rate may change under load from others: the best seen counts
        end = measure_peak(False, args.torch, threads, args.matmul_n)
        peak = {"start": peak, "end": end, "peak_flops": max(peak["peak_flops"], end["peak_flops"]),
                "source": end["source"] + ", at start and end of the run"}
    add_mfu(rows, peak["peak_flops"])
    result = {
        "bench": "step", "environment": env, "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind, "threads": {
            "torch": threads if args.torch else None, "xla_worker_threads_seen": xla_worker_threads(),
            "xla": "XLA:CPU intra-op pool, sized by XLA to the usable cores" if not accelerator else None},
        "peak": peak, "lr": LR, "optimizer": "AdamW b1=0.9 b2=0.95 eps=1e-8 wd=0.1, clip 1.0",
        "reps": args.reps, "warmup": args.warmup, "cases": rows,
        "loadavg_end": list(os.getloadavg()), "wall_s": time.perf_counter() - t0,
    }
    write_json(args.out, result)
    Path(args.out + ".partial").unlink(missing_ok=True)
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)", file=sys.stderr)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
