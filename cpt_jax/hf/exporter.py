"""Export a cpt_jax checkpoint or run to a Hugging Face folder, streaming shard by shard."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import yaml
from safetensors.numpy import save_file

from cpt_jax.checkpoint.params import load_model_checkpoint
from cpt_jax.cli.errors import UserError
from cpt_jax.hf.config_map import model_config_to_hf
from cpt_jax.hf.importer import TOKENIZER_FILES
from cpt_jax.hf.spm_tokenizer import spm_to_hf_tokenizer
from cpt_jax.hf.weights import get_path, mappings

DTYPES = {"fp32": (np.float32, "float32"), "bf16": (ml_dtypes.bfloat16, "bfloat16")}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", text.upper())
    if not m:
        raise UserError(f"--max-shard-size {text!r}: write it like 5GB, 500MB or 1000000")
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, None: 1}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _tokenizer_files(ckpt: Path, meta: dict, tokenizer_file: str | Path | None) -> list[Path]:
    """Where the tokenizer lives: the model checkpoint's copy, the HF folder it came from, or the
    run's configured tokenizer (its HF siblings, or a sentencepiece .model)."""
    candidates = [ckpt / "tokenizer"]
    hf_dir = (meta.get("source") or {}).get("hf_dir")
    if hf_dir:
        candidates.append(Path(hf_dir))
    if tokenizer_file is None and (ckpt / "config.yaml").is_file():
        tokenizer_file = (yaml.safe_load((ckpt / "config.yaml").read_text())["config"].get("tokenizer") or None)
    if tokenizer_file:
        tokenizer_file = Path(tokenizer_file)
        if tokenizer_file.suffix == ".model":
            return [tokenizer_file]
        candidates.insert(0, tokenizer_file.parent)
    for folder in candidates:
        found = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
        if found:
            return found
    return []


def _write_tokenizer(files: list[Path], out: Path, hf_config: dict) -> None:
    for f in files:
        if f.name != "generation_config.json":
            shutil.copy2(f, out / f.name)
    names = {f.name for f in files}
    if names == {files[0].name} and files[0].suffix == ".model" and files[0].name != "tokenizer.model":
        shutil.copy2(files[0], out / "tokenizer.model")
        names = {"tokenizer.model"}
    if names == {"tokenizer.model"}:
        # A bare sentencepiece model (trained by `cpt-jax prepare`): give AutoTokenizer a
        # tokenizer.json that encodes exactly as sentencepiece does.
        import sentencepiece as spm

        spm_to_hf_tokenizer(out / "tokenizer.model", out, hf_config.get("max_position_embeddings", 4096))
        sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
        hf_config.setdefault("bos_token_id", sp.bos_id())
        hf_config.setdefault("eos_token_id", sp.eos_id())


def export_hf(ckpt_dir: str | Path, out_dir: str | Path, *, dtype: str = "fp32", max_shard_size: str = "5GB",
              step: int | None = None, overwrite: bool = False, tokenizer_file: str | Path | None = None) -> Path:
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    np_dtype, dtype_name = DTYPES[dtype]
    limit = parse_size(max_shard_size)
    ckpt = Path(ckpt_dir)
    out = Path(out_dir).absolute()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; choose another folder or pass --overwrite")
    params, cfg, meta = load_model_checkpoint(ckpt, step=step)
    source = meta.get("source") or {}
    hf_config = model_config_to_hf(cfg, source.get("hf_config"), dtype=dtype_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        shards: list[dict[str, np.ndarray]] = []
        current: dict[str, np.ndarray] = {}
        size, weight_map, total = 0, {}, 0
        written = []

        def flush():
            nonlocal current, size
            if current:
                name = f"part-{len(written):05d}.safetensors"
                save_file(current, tmp / name, metadata={"format": "pt"})
                written.append((name, list(current)))
                current, size = {}, 0

        for m in mappings(cfg):
            # One parameter at a time comes to the host: peak memory is one shard, not the model.
            x = m.to_hf(np.asarray(jax.device_get(get_path(params, m.path)), np.float32)).astype(np_dtype)
            x = np.ascontiguousarray(x)
            if size and size + x.nbytes > limit:
                flush()
            current[m.hf_name] = x
            size += x.nbytes
            total += x.nbytes
        flush()
        del shards
        if len(written) == 1:
            (tmp / written[0][0]).rename(tmp / "model.safetensors")
        else:
            n = len(written)
            for i, (name, names) in enumerate(written):
                final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                (tmp / name).rename(tmp / final)
                weight_map.update({t: final for t in names})
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        _write_tokenizer(_tokenizer_files(ckpt, meta, tokenizer_file), tmp, hf_config)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        gen = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_config.get(k) is not None}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
