"""Export a cpt_jax checkpoint or run to a Hugging Face folder, streaming layer by layer."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import yaml
from tqdm import tqdm

from cpt_jax.checkpoint.model_checkpoint import (
    TOKENIZER_FILES,
    HostParamReader,
    check_output_dir,
    manager_dir,
    staged_output,
)
from cpt_jax.errors import UserError
from cpt_jax.model.config import ModelConfig, canonical_dtype
from cpt_jax.hf.config_map import model_config_to_hf_config
from cpt_jax.hf.safetensors_io import ShardWriter, parse_size
from cpt_jax.hf.spm_tokenizer import spm_to_hf_tokenizer
from cpt_jax.hf.weights import Mapping, get_path, mappings, set_path
from cpt_jax.storage import absolute, as_path, copy

EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}  # what safetensors shards hold
GENERATION_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _tokenizer_files(ckpt: Path, meta: dict, tokenizer_file: str | Path | None) -> list[Path]:
    """Where the tokenizer lives: the run's configured tokenizer (its HF siblings, or a bare
    sentencepiece .model), the model checkpoint's copy, or the HF folder the weights came from."""
    candidates = [ckpt / "tokenizer"]
    source = meta.get("source") or {}  # tokenizer_dir: the new tokenizer of a vocabulary extension
    candidates += [as_path(source[k]) for k in ("tokenizer_dir", "hf_dir") if source.get(k)]
    if tokenizer_file is None and (ckpt / "config.yaml").is_file():
        run = yaml.safe_load((ckpt / "config.yaml").read_text()) or {}
        tokenizer_file = (run.get("config") or {}).get("tokenizer") or None
    if tokenizer_file:
        tokenizer_file = as_path(tokenizer_file)
        if tokenizer_file.suffix == ".model":
            return [tokenizer_file]
        candidates.insert(0, tokenizer_file.parent)
    for folder in candidates:
        found = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
        if found:
            return found
    return []


def _write_tokenizer(files: list[Path], out: Path, hf_config: dict) -> None:
    """Copy the tokenizer files. A bare sentencepiece model (trained by `cpt-jax prepare`) also
    gets a tokenizer.json that encodes exactly as sentencepiece does, so AutoTokenizer loads it."""
    if not files:
        warnings.warn("no tokenizer found for this checkpoint; the export has weights and config only "
                      "(pass --tokenizer to include one)", stacklevel=3)
        return
    for f in files:
        copy(f, out / ("tokenizer.model" if f.suffix == ".model" else f.name))
    if len(files) == 1 and files[0].suffix == ".model":
        import sentencepiece as spm

        spm_to_hf_tokenizer(out / "tokenizer.model", out, hf_config.get("max_position_embeddings", 4096))
        sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
        hf_config.setdefault("bos_token_id", sp.bos_id())
        hf_config.setdefault("eos_token_id", sp.eos_id())


def _write_generation_config(out: Path, hf_config: dict) -> None:
    """The source's generation_config.json (copied with the tokenizer) is kept; otherwise one
    is made from the token ids of config.json, as transformers does."""
    if not (out / "generation_config.json").is_file():
        gen = {k: hf_config[k] for k in GENERATION_KEYS if hf_config.get(k) is not None}
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2))


def _groups(cfg: ModelConfig) -> dict[tuple, list[Mapping]]:
    groups: dict[tuple, list[Mapping]] = {}
    for m in mappings(cfg):
        groups.setdefault(m.group_in(cfg.scan_layers), []).append(m)
    return groups


def _write_weights(reader: HostParamReader, out: Path, np_dtype, max_bytes: int, progress: bool) -> None:
    """One group at a time from the checkpoint to host memory (a layer when the checkpoint's
    layers are unrolled; one weight of all layers when they are stacked), each tensor converted
    to HF layout and handed to the shard writer, which writes every file as soon as it is full."""
    from cpt_jax.model.params import abstract_params

    cfg = reader.model_cfg
    abstract = abstract_params(cfg)
    writer = ShardWriter(out, max_bytes)
    bar = tqdm(total=len(mappings(cfg)), desc="export", unit="tensor", disable=not progress)
    for group in _groups(cfg).values():
        wanted: dict = {}
        for m in group:
            path, _ = m.location(cfg.scan_layers)
            x = get_path(abstract, path)
            set_path(wanted, path, jax.ShapeDtypeStruct(x.shape, x.dtype))
        host = reader.read(wanted)
        for m in group:
            path, index = m.location(cfg.scan_layers)
            x = get_path(host, path)
            x = np.asarray(x if index is None else x[index], dtype=np.float32)
            writer.add(m.hf_name, m.to_hf(x).astype(np_dtype, copy=False))
            bar.update()
        del host
    bar.close()
    writer.finish()


def export_hf(ckpt_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32", max_shard_size: str = "5GB",
              step: int | None = None, overwrite: bool = False, tokenizer_file: str | Path | None = None,
              progress: bool = False, ema: bool = False) -> Path:
    """A model checkpoint or run directory (latest step, or `step`) -> HF folder that
    `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load. ema: export
    the run's weight EMA instead of its raw weights."""
    dtype_name = canonical_dtype(dtype)
    if dtype_name not in EXPORT_DTYPES:
        raise UserError(f"export dtype {dtype!r}: choose one of {', '.join(EXPORT_DTYPES)} (or bf16, fp32)")
    np_dtype = EXPORT_DTYPES[dtype_name]
    max_bytes = parse_size(max_shard_size)
    ckpt, out = as_path(ckpt_dir), absolute(out_dir)
    check_output_dir(out, overwrite, ckpt, manager_dir(ckpt))
    with HostParamReader(ckpt, step, item="ema" if ema else "params") as reader:
        source = reader.meta.get("source") or {}
        hf_config = model_config_to_hf_config(reader.model_cfg, source.get("hf_config"), dtype=dtype_name)
        tokenizer = _tokenizer_files(ckpt, reader.meta, tokenizer_file)
        with staged_output(out) as tmp:
            _write_weights(reader, tmp, np_dtype, max_bytes, progress)
            _write_tokenizer(tokenizer, tmp, hf_config)
            (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
            _write_generation_config(tmp, hf_config)
    return out
