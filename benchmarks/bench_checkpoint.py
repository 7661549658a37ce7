"""Checkpoint save/restore time per GB: cpt_jax's RunCheckpointer against a plain write of the same bytes.

    python benchmarks/bench_checkpoint.py --out results/checkpoint.json            # 0.5 GB params + 1 GB Adam
    python benchmarks/bench_checkpoint.py --out results/checkpoint.json --gb 0.1 --reps 1

The state is a real train state (Decoder parameters + AdamW moments, fp32), sized to --gb, with
random moments: zeros would compress and flatter the writer. Saved with RunCheckpointer
(orbax, async) exactly as the trainer saves it. Measured per repetition:
  save_blocking   time inside save(): what training waits for
  save_total      until the background write has finished (wait())
  save_durable    plus an fsync of every file written (what a crash would keep)
  restore_cold    RunCheckpointer.restore after the files were dropped from the page cache
                  (posix_fadvise DONTNEED after fsync), then block_until_ready
  restore_warm    the same again with the files cached
Baseline on the same disk: every leaf written sequentially into one file with numpy tofile +
fsync (plain_write_durable; plain_write without the fsync), and read back with numpy fromfile +
device_put (plain_read_cold after dropping the cache, plain_read_warm).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cpt_jax.checkpoint.run_checkpoint import RunCheckpointer  # noqa: E402
from cpt_jax.model.config import ModelConfig  # noqa: E402
from cpt_jax.checkpoint.run_checkpoint import CheckpointConfig  # noqa: E402
from cpt_jax.train.optimizer import OptimizerConfig  # noqa: E402
from cpt_jax.sharding import MeshConfig, make_mesh  # noqa: E402
from cpt_jax.model.params import init_params  # noqa: E402
from cpt_jax.train.optimizer import make_optimizer  # noqa: E402
from common import environment, write_json  # noqa: E402

HIDDEN, FFN, HEADS = 768, 2048, 12
BYTES_PER_PARAM = 12  # fp32 parameter + two fp32 Adam moments


def model_for(gb: float) -> ModelConfig:
    """A Decoder whose parameters + Adam moments take about `gb` GB: ~30% embeddings, rest layers."""
    params = gb * 1e9 / BYTES_PER_PARAM
    layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN + 2 * HIDDEN
    vocab = max(256, int(0.3 * params / (2 * HIDDEN)) // 256 * 256)
    layers = max(1, round(0.7 * params / layer))
    return ModelConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_layers=layers,
                       num_heads=HEADS)


def train_state(cfg: ModelConfig):
    """Parameters and AdamW state with every float leaf random (incompressible, like a real run)."""
    mesh = make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    params = init_params(cfg, mesh, seed=0)
    opt_state = make_optimizer(OptimizerConfig()).init(params)
    leaves, treedef = jax.tree.flatten(opt_state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [jax.random.normal(k, x.shape, x.dtype) * 1e-3 if x.ndim and jax.numpy.issubdtype(x.dtype, jax.numpy.floating)
              else x for k, x in zip(keys, leaves)]
    return params, jax.block_until_ready(jax.tree.unflatten(treedef, leaves))


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]


def fsync_all(path: Path) -> None:
    for p in files_under(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def drop_cache(path: Path) -> None:
    """Evict the (already fsynced, hence clean) pages of these files, so the next read hits disk.
    Per file, without root: dropping the whole system cache would need it."""
    for p in files_under(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in files_under(path))


def mount_of(path: Path) -> str:
    """The filesystem the files land on (device, mount point, type), for the record."""
    path = path.resolve()
    best = ("?", "/", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, fstype = line.split()[:3]
        if (path == Path(mnt) or Path(mnt) in path.parents) and len(mnt) >= len(best[1]):
            best = (dev, mnt, fstype)
    return f"{best[0]} on {best[1]} ({best[2]})"


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_orbax(work: Path, params, opt_state) -> dict[str, float]:
    """One save and two restores through RunCheckpointer, in a fresh run directory."""
    ckpt = RunCheckpointer(work, CheckpointConfig(async_save=True))
    abstract = [jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
                for tree in (params, opt_state)]
    t = {}
    t0 = time.perf_counter()
    ckpt.save(1, params, opt_state, {"bench": True})
    t["save_blocking"] = time.perf_counter() - t0
    ckpt.wait()
    t["save_total"] = time.perf_counter() - t0
    step_dir = ckpt.directory / "1"
    fsync_all(step_dir)
    t["save_durable"] = time.perf_counter() - t0
    drop_cache(step_dir)
    for key in ("restore_cold", "restore_warm"):
        t[key] = seconds(lambda: jax.block_until_ready(ckpt.restore(1, *abstract)[:2]))
    t["disk_bytes"] = disk_bytes(step_dir)
    ckpt.close()
    return t


def bench_plain(path: Path, params, opt_state) -> dict[str, float]:
    """The same leaves written back to back into one file, then read back onto the device."""
    leaves = jax.tree.leaves((params, opt_state))

    def read():
        with open(path, "rb") as f:
            return [jax.device_put(np.fromfile(f, x.dtype, math.prod(x.shape)).reshape(x.shape), x.sharding)
                    for x in leaves]

    t = {}
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for x in leaves:
            np.asarray(x).tofile(f)
        f.flush()
        t["plain_write"] = time.perf_counter() - t0
        os.fsync(f.fileno())
    t["plain_write_durable"] = time.perf_counter() - t0
    drop_cache(path)
    for key in ("plain_read_cold", "plain_read_warm"):
        t[key] = seconds(lambda: jax.block_until_ready(read()))
    return t


def summarise(times: dict[str, list[float]], gb: float) -> dict:
    return {k: {"median_s": statistics.median(v), "all_s": v, "s_per_gb": statistics.median(v) / gb,
                "gb_per_s": gb / statistics.median(v)} for k, v in times.items()}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write the results to")
    p.add_argument("--gb", type=float, default=1.5,
                   help="size of params + Adam moments, in GB (1e9 bytes); 1.5: 0.5 GB of parameters")
    p.add_argument("--reps", type=int, default=3, help="saves and restores of each kind")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where to write (the disk under test)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    t_start = time.perf_counter()
    env = environment()
    cfg = model_for(args.gb)
    params, opt_state = train_state(cfg)
    nbytes = sum(x.nbytes for x in jax.tree.leaves((params, opt_state)))
    gb = nbytes / 1e9
    print(f"state: {gb:.3f} GB in {len(jax.tree.leaves((params, opt_state)))} arrays", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="cpt_jax-bench-ckpt-", dir=args.dir))
    times: dict[str, list[float]] = {}
    try:
        # Alternate the two writers so that a change in disk or host load hits both.
        for rep in range(args.reps):
            for part in (bench_orbax(work / f"run{rep}", params, opt_state),
                         bench_plain(work / "plain.bin", params, opt_state)):
                for k, v in part.items():
                    times.setdefault(k, []).append(v)
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    disk = times.pop("disk_bytes")[0]
    timings = summarise(times, gb)
    result = {
        "bench": "checkpoint", "environment": env, "gb": gb, "bytes": nbytes, "orbax_disk_bytes": disk,
        "model": {"hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers, "vocab_size": cfg.vocab_size},
        "filesystem": mount_of(work.parent), "reps": args.reps, "timings": timings,
        "blocking_fraction": timings["save_blocking"]["median_s"] / timings["save_total"]["median_s"],
        "orbax_over_plain": {
            "save_total": timings["save_total"]["median_s"] / timings["plain_write"]["median_s"],
            "save_durable": timings["save_durable"]["median_s"] / timings["plain_write_durable"]["median_s"],
            "restore_cold": timings["restore_cold"]["median_s"] / timings["plain_read_cold"]["median_s"],
            "restore_warm": timings["restore_warm"]["median_s"] / timings["plain_read_warm"]["median_s"]},
        "loadavg_end": list(os.getloadavg()), "wall_s": time.perf_counter() - t_start,
    }
    write_json(args.out, result)
    for k, v in timings.items():
        print(f"{k:22s} {v['median_s']:8.3f} s  {v['gb_per_s']:6.2f} GB/s", file=sys.stderr)
    print(f"async save blocks {100 * result['blocking_fraction']:.1f}% of its wall time", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
