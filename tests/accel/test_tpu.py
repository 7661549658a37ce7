"""The train step compiled by libtpu for TPU v5e, v5p and v6e slices with the kernel `auto`
picks there (splash): forward and backward kernels present as Mosaic custom calls, GQA,
head_dim 64 and 128, packed documents, two slices over DCN, parameter bytes as counted."""

from __future__ import annotations

import pytest

from compile_fixtures import LLAMA, QWEN3, compile_for, instruction_names, plan

pytest.importorskip("libtpu", reason="the TPU compiler is not installed (pip install 'cpt-jax[tpu]')")

from cpt_jax.estimate.analytic import state_bytes  # noqa: E402
from cpt_jax.estimate.step import input_bytes  # noqa: E402
from cpt_jax.model.attention import resolve  # noqa: E402

# (target, slices, model, plan overrides): each a covering case on a 4-chip slice.
CASES = {
    "llama-hd64-v5e": ("tpu-v5e:2x2", 1, LLAMA, ["model.dtype=bfloat16"]),
    "qwen3-hd128-v5p": ("tpu-v5p:2x2x1", 1, QWEN3, []),
    "llama-hd128-v6e": ("tpu-v6e:2x2", 1, LLAMA, ["model.hidden_size=512", "model.dtype=bfloat16"]),
    "llama-two-slices-v5e": ("tpu-v5e:2x2", 2, LLAMA, ["mesh.dcn_data=2", "data.global_batch_size=8"]),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    target, slices, model, extra = CASES[request.param]
    cfg = plan(model, *extra)
    return request.param, cfg, compile_for(target, cfg, slices)


def test_auto_picks_splash_on_tpu():
    assert resolve("auto", "tpu") == "splash"


def test_splash_forward_and_backward_are_mosaic_kernels(case):
    """The compiled program runs splash's own Mosaic kernels, forward and both backward ones
    (dq, dkv), in the segmented (packed documents) form: an XLA fallback has none of them."""
    _, cfg, c = case
    names = instruction_names(c.custom_calls("tpu_custom_call"))
    for kernel in ("splash_mha_fwd_segmented", "splash_mha_dq_segmented", "splash_mha_dkv_segmented"):
        assert any(n.startswith(kernel) for n in names), (kernel, names)


def test_parameter_bytes_equal_the_analytic_count(case):
    _, cfg, c = case
    params_in = c.compiled.input_shardings[0][0].params
    assert input_bytes(c.state.params, params_in) == state_bytes(c.setup)["params"]


def test_slices_span_the_data_axis_over_dcn(case):
    """Each part of the data axis lies in one slice (DCN carries only the data-parallel
    reduction); two slices on the two-slice case, one otherwise (whose devices have no
    slice_index)."""
    _, cfg, c = case
    mesh = c.setup.mesh
    assert mesh.shape["data"] == cfg.mesh.num_slices
    assert [{getattr(d, "slice_index", 0) for d in mesh.devices[i].flat} for i in range(mesh.shape["data"])] == \
        [{i} for i in range(cfg.mesh.num_slices)]


def test_a_plan_too_big_for_its_slice_is_reported_as_not_fitting():
    """~4.2B fp32 parameters with AdamW on 4 v5e chips (16 GiB each): libtpu's RESOURCE_EXHAUSTED
    comes back from the estimator as the answer "does not fit", not as an exception."""
    from cpt_jax.estimate.plan import estimate_plan

    cfg = plan(["model.hidden_size=4096", "model.intermediate_size=16384", "model.num_layers=16",
                "model.num_heads=32", "model.num_kv_heads=8", "model.vocab_size=32000"])
    result = estimate_plan(cfg, target="tpu-v5e:2x2")
    assert result["fits"] is False
    assert "RESOURCE_EXHAUSTED" in result["compiled"]["oom"]
    assert result["analytic"]["peak"] > 16 * 2**30  # the analytic count agrees
