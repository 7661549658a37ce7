"""Streamed import: each tensor goes from its memory-mapped file straight into its shards, so an
import holds the model's own shards plus about one tensor, never a second copy of the model."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from hf_fixtures import make_tiny_hf_model
from jax.sharding import NamedSharding, PartitionSpec

from cpt_jax.hf import load_hf_params
from cpt_jax.hf.importer import aligned_empty, place_tensor
from cpt_jax.hf.safetensors_io import MappedTensor, read_header, tensor_files
from cpt_jax.model.params import param_shardings
from cpt_jax.sharding import MeshConfig, make_mesh

ROOT = Path(__file__).resolve().parents[1]

# The child imports a tiny model first (JAX's compiler, orbax and tensorstore warm up), then
# resets the kernel's peak-RSS mark (/proc/self/clear_refs) and imports the measured model with
# one CPU device, where the "device" arrays live in host RAM: first reading it (load_hf_params),
# then writing it (orbax), the peak of each phase measured from the same baseline.
CHILD = r"""
import json, re, sys
from pathlib import Path
import jax
from cpt_jax.checkpoint.model_checkpoint import save_model_checkpoint
from cpt_jax.hf import import_hf, load_hf_params
def status(key):
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024
import_hf(sys.argv[1], sys.argv[3] + "/warm")
base = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
cfg, params, source = load_hf_params(sys.argv[2], None, None)
read = status("VmHWM")
save_model_checkpoint(sys.argv[3] + "/ckpt", params, cfg, {"source": source}, host_gb=0.0)
print(json.dumps({"baseline": base, "read": read, "write": status("VmHWM")}))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    tiny = make_tiny_hf_model(root / "tiny", "llama", tokenizer=False)
    # ~85 MB fp32: two 33 MB embedding matrices dominate, as in real checkpoints.
    big = make_tiny_hf_model(root / "big", "llama", tokenizer=False, max_shard_size="40MB", vocab_size=16000,
                             hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4)
    return root, tiny, big


def tensor_sizes(hf_dir: Path) -> list[int]:
    return [t.end - t.start for f in set(tensor_files(hf_dir).values()) for t in read_header(f).values()]


def test_import_holds_the_model_plus_about_one_tensor(models):
    root, tiny, big = models
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tiny), str(big), str(root / "out")],
                          capture_output=True, text=True, check=False, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    sizes = tensor_sizes(big)
    model, largest = sum(sizes), max(sizes)
    # Reading: the model's own arrays (one CPU device: host RAM) + at most one tensor in flight;
    # writing adds nothing (orbax hands each array to tensorstore uncompressed, which writes it in place).
    # (+16 MB: XLA compiling the few placement programs of this model's new shapes)
    read, write = r["read"] - r["baseline"], r["write"] - r["baseline"]
    print(f"model {model / 1e6:.1f} MB, largest tensor {largest / 1e6:.1f} MB; peak over baseline: "
          f"reading {read / 1e6:.1f} MB, reading and writing {write / 1e6:.1f} MB")
    assert model <= read <= model + largest + 16e6, (read / 1e6, model / 1e6, largest / 1e6)
    assert write <= model + largest + 16e6, (write / 1e6, model / 1e6, largest / 1e6)


def test_mapped_tensor_copies_through_a_transposed_view(models, monkeypatch):
    _, _, big = models
    monkeypatch.setattr("cpt_jax.hf.safetensors_io.BLOCK_BYTES", 4096)  # many blocks
    files = tensor_files(big)
    path = files["lm_head.weight"]
    t = MappedTensor(path, read_header(path)["lm_head.weight"])
    want = np.array(t.array).T
    out = np.empty(want.shape, np.float32)
    t.copy_to(out.T)
    np.testing.assert_array_equal(out, want)


def test_same_values_on_one_device_and_on_a_mesh(models):
    _, tiny, _ = models
    cfg, single, _ = load_hf_params(tiny, None, None)
    assert {d for x in jax.tree.leaves(single) for d in x.devices()} == {jax.devices()[0]}
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), jax.devices()[:4])
    _, sharded, _ = load_hf_params(tiny, None, param_shardings(cfg, mesh))
    for a, b, s in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), jax.tree.leaves(param_shardings(cfg, mesh))):
        assert b.sharding == s
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # Replicas own their memory: an in-place update on one device must not reach another.
        pointers = [shard.data.unsafe_buffer_pointer() for shard in b.addressable_shards]
        assert len(set(pointers)) == len(pointers)


@pytest.mark.parametrize("spec", [PartitionSpec(), PartitionSpec("fsdp"), PartitionSpec(None, "tensor")])
def test_each_replica_gets_its_own_buffer_even_from_an_aligned_host_tensor(spec):
    # An aligned block is what XLA:CPU adopts without copying: the case where replicas could share it.
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), jax.devices()[:4])
    # Several sizes: whether a fresh host copy lands on a 64-byte boundary depends on the allocator.
    for rows in (4, 64, 256, 1024, 4096):
        host = aligned_empty((rows, 16), np.float32)
        host[...] = np.arange(host.size, dtype=np.float32).reshape(host.shape)
        placed = place_tensor(host, NamedSharding(mesh, spec))
        np.testing.assert_array_equal(np.asarray(placed), host)
        pointers = [shard.data.unsafe_buffer_pointer() for shard in placed.addressable_shards]
        assert len(set(pointers)) == len(pointers), rows
