"""Where batches live: the batch sharding, which rows each process feeds, and assembling the
global jax.Array from every process's rows. Shared by training and evaluation."""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cpt_jax.errors import UserError
from cpt_jax.sharding.rules import logical_to_spec

BATCH_AXES = ("batch", "length")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(BATCH_AXES, mesh=mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def host_row_range(sharding, global_batch_size: int, seq_len: int) -> tuple[int, int]:
    """Rows [lo, hi) of the global batch that this process's devices hold under `sharding`."""
    index_map = sharding.addressable_devices_indices_map((global_batch_size, seq_len))
    spans = sorted({(s[0].start or 0, global_batch_size if s[0].stop is None else s[0].stop)
                    for s in index_map.values()})
    lo, hi = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != hi - lo:
        raise UserError(f"this process holds non-contiguous rows {spans} of the batch; order the mesh devices "
                        "by process (jax.make_mesh does) so each host holds one contiguous slice")
    return lo, hi


def to_global_batch(local: Mapping[str, np.ndarray], sharding, global_batch_size: int) -> dict:
    """Assemble the global jax.Array batch from every process's local rows."""
    return {k: jax.make_array_from_process_local_data(sharding, v, (global_batch_size, *v.shape[1:]))
            for k, v in local.items()}


def local_rows(batch: Mapping[str, np.ndarray], sharding) -> dict:
    """The rows of a whole batch that this process's devices hold: not always 1/process_count
    of them (a mesh axis across processes that does not split the batch, e.g. tensor)."""
    rows, seq = next(iter(batch.values())).shape
    lo, hi = host_row_range(sharding, rows, seq)
    return {k: v[lo:hi] for k, v in batch.items()}


def place_batch(batch: Mapping[str, np.ndarray], sharding) -> dict:
    """A whole batch (every process read all of it, as evaluation does) as a global array."""
    rows = next(iter(batch.values())).shape[0]
    return to_global_batch(local_rows(batch, sharding), sharding, rows)
