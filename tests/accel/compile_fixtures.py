"""The plans and the compile helper the accelerator tests share."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_tpu = pytest.mark.skipif(not installed("libtpu"), reason="needs the tpu extra (libtpu)")
needs_cuda = pytest.mark.skipif(not installed("jax_plugins.xla_cuda12"), reason="needs the cuda12 extra")

# A small Llama (GQA 4:2, head_dim 64) and a Qwen3 (qk-norm, head_dim 128 set freely). Every
# batch carries segment ids (packed documents), so the kernels compile in their segmented form.
LLAMA = ["model.family=llama", "model.hidden_size=256", "model.intermediate_size=512", "model.num_heads=4",
         "model.num_kv_heads=2"]
QWEN3 = ["model.family=qwen3", "model.hidden_size=256", "model.intermediate_size=512", "model.num_heads=4",
         "model.num_kv_heads=2", "model.head_dim=128", "model.qk_norm=true"]
SHAPE = ["data.seq_len=256", "model.max_position_embeddings=256", "model.attention=auto", "mesh.data=1",
         "mesh.fsdp=-1"]


def plan(model: list[str], *extra: str):
    """configs/tiny.yaml with `model` and the shared shape: the plan `compile_for` compiles."""
    from cpt_jax.train.config import load_run_config

    return load_run_config(ROOT / "configs" / "tiny.yaml", ["run_dir=unused", *model, *SHAPE, *extra])


@dataclass
class Compiled:
    """One plan compiled for one target: what every test checks."""

    setup: object
    state: object
    compiled: object
    text: str

    def custom_calls(self, target: str) -> list[str]:
        """One line per custom call to `target` in the optimized HLO."""
        return [line for line in self.text.splitlines() if f'custom_call_target="{target}"' in line]


def compile_for(target: str, cfg, slices: int = 1) -> Compiled:
    """The run's own train step (build_setup) lowered on abstract inputs and compiled for
    `target`'s compile-only devices (cpt_jax.estimate.targets)."""
    from cpt_jax.estimate.step import abstract_inputs, without_data
    from cpt_jax.estimate.targets import compiler_options, target_devices
    from cpt_jax.sharding.mesh import make_mesh
    from cpt_jax.train.setup import build_setup

    devices, info = target_devices(target, slices)
    setup = build_setup(without_data(cfg), make_mesh(cfg.mesh, devices))
    state, batch = abstract_inputs(setup)
    compiled = setup.train_step.lower(state, batch).compile(compiler_options(info) or None)
    return Compiled(setup, state, compiled, compiled.as_text())


def instruction_names(lines: list[str]) -> list[str]:
    return [re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=", line).group(1) for line in lines]
