"""The train step compiled by XLA's CUDA compiler for one host of 8 H100s (topology 1x1x8) with
the kernel `auto` picks on NVIDIA (pallas_gpu): its Triton kernels, forward and backward, are in
the compiled program; GQA, head_dim 64 and 128, packed documents, fp32 and bf16 compute."""

from __future__ import annotations

import re

import pytest

from compile_fixtures import LLAMA, QWEN3, compile_for, plan

pytest.importorskip("jax_plugins.xla_cuda12", reason="the CUDA compiler is not installed "
                    "(pip install 'cpt-jax[cuda12]')")

from cpt_jax.estimate.analytic import state_bytes  # noqa: E402
from cpt_jax.estimate.step import input_bytes  # noqa: E402
from cpt_jax.model.attention import resolve  # noqa: E402

TRITON = "__gpu$xla.gpu.triton"
CASES = {
    "llama-hd64-bf16": (LLAMA, ["model.dtype=bfloat16", "data.global_batch_size=8"]),
    "qwen3-hd128-fp32": (QWEN3, ["data.global_batch_size=8"]),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    model, extra = CASES[request.param]
    cfg = plan(model, *extra)
    return cfg, compile_for("h100x8", cfg)


def test_auto_picks_pallas_gpu_on_nvidia():
    assert resolve("auto", "cuda") == "pallas_gpu"


def test_compiled_for_h100(case):
    _, c = case
    devices = c.setup.mesh.devices.flat
    assert all(d.device_kind == "NVIDIA H100 80GB HBM3" for d in devices)


def test_pallas_forward_and_backward_are_triton_kernels(case):
    """The kernel's Triton calls, forward and backward, with the int32 segment ids (packed
    documents) among the forward's operands: an XLA fallback has no Triton call at all."""
    cfg, c = case
    calls = c.custom_calls(TRITON)
    ops = {re.search(r'op_name="[^"]*/(mha_\w+)/pallas_call"', line).group(1) for line in calls}
    assert {"mha_forward", "mha_backward"} <= ops, ops
    forward = [line for line in calls if "/mha_forward/" in line]
    rows = cfg.data.global_batch_size // 8
    assert all(f"s32[{rows},{cfg.data.seq_len}]" in line for line in forward)


def test_parameter_bytes_equal_the_analytic_count(case):
    _, c = case
    params_in = c.compiled.input_shardings[0][0].params
    assert input_bytes(c.state.params, params_in) == state_bytes(c.setup)["params"]
