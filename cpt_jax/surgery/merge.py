"""`merge_from_recipe`: a MergeKit recipe -> a merged HF folder or cpt_jax checkpoint, streamed
tensor by tensor (host memory: one tensor of each input plus the merge's scratch)."""

from __future__ import annotations

import json
import tempfile
import warnings
from contextlib import ExitStack
from pathlib import Path

import ml_dtypes
import numpy as np
from tqdm import tqdm

from cpt_jax.checkpoint.model_checkpoint import (
    TOKENIZER_FILES,
    check_output_dir,
    manager_dir,
    parse_ckpt_ref,
    staged_output,
)
from cpt_jax.errors import UserError
from cpt_jax.hf.importer import import_hf
from cpt_jax.hf.safetensors_io import parse_size
from cpt_jax.storage import absolute, copy, is_remote
from cpt_jax.surgery import merge_methods as mm
from cpt_jax.surgery.recipe import (
    METHOD_PARAMETERS,
    RANDOM_METHODS,
    TASK_ARITHMETIC_DEFAULTS,
    Recipe,
    layer_position,
    load_recipe,
    resolve,
)
from cpt_jax.surgery.safetensors_stream import StreamingShardWriter
from cpt_jax.surgery.sources import CKPT_PREFIX, open_source

NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}
DTYPE_NAMES = {v: k for k, v in NP_DTYPES.items()}
VOCAB_TENSORS = ("embed_tokens.weight", "lm_head.weight")
FORMATS = ("hf", "cpt_jax")


def _check_same_tensors(ref, sources: dict) -> None:
    """Every input has the reference's tensors with the reference's shapes, checked from the
    headers before any data is read."""
    names = set(ref.names)
    for src in sources.values():
        missing, extra = sorted(names - set(src.names)), sorted(set(src.names) - names)
        if missing or extra:
            which, name = ("lacks", missing[0]) if missing else ("has the extra", extra[0])
            raise UserError(f"model {src.ref} {which} tensor {name!r} compared with {ref.ref}; only models of "
                            "one architecture and size can be merged")
        for name in ref.names:
            a, b = ref.shape(name), src.shape(name)
            if a == b:
                continue
            if name.endswith(VOCAB_TENSORS):
                raise UserError(f"{name} is {b} in {src.ref} but {a} in {ref.ref}: the vocabularies differ. Merging "
                                "needs identical vocabularies (cpt_jax has no tokenizer union); extend the smaller "
                                "model's vocabulary to the other's tokenizer first")
            raise UserError(f"tensor {name!r} is {b} in {src.ref} but {a} in {ref.ref}; only models of one "
                            "architecture and size can be merged")


def _output_order(ref, sources: dict) -> list[str]:
    """The reference's tensor order, or a checkpoint input's (weight by weight when its layers
    are stacked), so that input reads each stacked weight once."""
    for src in sources.values():
        if getattr(src, "scanned", False):
            return list(src.names)
    return list(ref.names)


def _num_layers(ref) -> int:
    layers = ref.hf_config.get("num_hidden_layers")
    return int(layers) if layers else 1


class _TensorMerger:
    """The recipe's method applied to one tensor name at a time, parameters resolved per tensor."""

    def __init__(self, recipe: Recipe, sources: dict, num_layers: int, seed: int | None):
        self.recipe, self.sources, self.num_layers = recipe, sources, num_layers
        self.inputs = recipe.inputs()
        self.seed = seed if seed is not None else int(recipe.parameters.get("seed", 0))
        self.dtype = NP_DTYPES[recipe.dtype] if recipe.dtype else None

    def _read(self, model: str, name: str) -> np.ndarray:
        x = self.sources[model].read(name)
        return x.astype(self.dtype, copy=False) if self.dtype is not None else x  # MergeKit casts inputs first

    def _shared(self, key: str, name: str, t: float, default=None):
        if default is None:
            default = METHOD_PARAMETERS[self.recipe.merge_method]["shared"][key]
        return resolve(key, [self.recipe.parameters], name, t, default, "parameters")

    def _per_model(self, key: str, entry, name: str, t: float):
        default = METHOD_PARAMETERS[self.recipe.merge_method]["model"][key]
        return resolve(key, [entry.parameters, self.recipe.parameters], name, t, default, f"models[{entry.model}]")

    def __call__(self, name: str) -> np.ndarray:
        r, t = self.recipe, layer_position(name, self.num_layers)
        if r.merge_method == "linear":
            weights = [self._per_model("weight", e, name, t) for e in self.inputs]
            normalize = self._shared("normalize", name, t)
            if normalize and sum(weights) == 0:
                raise UserError(f"the linear weights of tensor {name!r} sum to 0, so they cannot be normalized; "
                                "change the weights or set parameters.normalize: false")
            return mm.linear((self._read(e.model, name) for e in self.inputs), weights, normalize)
        others = [e for e in self.inputs if e.model != r.base_model]
        base = self._read(r.base_model, name)
        if r.merge_method == "slerp":
            return mm.slerp(self._shared("t", name, t), base, self._read(others[0].model, name))
        normalize, rescale = (self._shared(k, name, t, default)
                              for k, default in zip(("normalize", "rescale"), TASK_ARITHMETIC_DEFAULTS[r.merge_method]))
        sparsify = {"ties": "magnitude", "dare_ties": "random", "dare_linear": "random"}.get(r.merge_method)
        return mm.task_arithmetic(
            base, (self._read(e.model, name) for e in others),
            [self._per_model("weight", e, name, t) for e in others],
            [self._per_model("density", e, name, t) for e in others],
            sparsify=sparsify, consensus=r.merge_method in ("ties", "dare_ties"), rescale=rescale,
            normalize=normalize, lam=self._shared("lambda", name, t),
            rng=mm.tensor_rng(self.seed, name) if r.merge_method in RANDOM_METHODS else None)


def _write_config_and_tokenizer(ref, tokenizer_src, out: Path, out_dtype: np.dtype) -> None:
    config = dict(ref.hf_config)
    for key in [k for k in ("dtype", "torch_dtype") if k in config] or ["dtype"]:
        config[key] = DTYPE_NAMES[out_dtype]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok_dir = tokenizer_src.tokenizer_dir
    found = [f for f in (tok_dir / n for n in TOKENIZER_FILES) if f.is_file()] if tok_dir else []
    if not found:
        warnings.warn(f"no tokenizer files found with {tokenizer_src.ref}; the merged model has weights and "
                      "config only",
                      stacklevel=3)
    for f in found:
        copy(f, out / f.name)


def _merge_to_hf(recipe: Recipe, sources: dict, out: Path, max_bytes: int, seed: int | None, progress: bool) -> None:
    ref = sources[recipe.reference()]
    _check_same_tensors(ref, sources)
    merger = _TensorMerger(recipe, sources, _num_layers(ref), seed)
    names = _output_order(ref, sources)
    out_dtype = {n: NP_DTYPES[recipe.out_dtype or recipe.dtype] if (recipe.out_dtype or recipe.dtype) else ref.dtype(n)
                 for n in names}
    with StreamingShardWriter(out, [(n, ref.shape(n), out_dtype[n]) for n in names], max_bytes) as writer:
        for name in tqdm(names, desc="merge", unit="tensor", disable=not progress):
            writer.add(name, merger(name).astype(out_dtype[name], copy=False))
        writer.finish()
    _write_config_and_tokenizer(ref, sources[recipe.tokenizer_model()], out, out_dtype[names[0]])


def _input_path(ref: str):
    return absolute(parse_ckpt_ref(ref[len(CKPT_PREFIX):])[0] if ref.startswith(CKPT_PREFIX) else ref)


def merge_from_recipe(recipe_path: str | Path, out_dir: str | Path, fmt: str = "hf", overwrite: bool = False,
                      progress: bool = True, seed: int | None = None, max_shard_size: str = "5GB") -> Path:
    """Merge the models of a MergeKit recipe into `out_dir` (an HF folder, or a cpt_jax model
    checkpoint with fmt="cpt_jax"), written whole or not at all. `seed` (else the recipe's
    parameters.seed, else 0) fixes the DARE methods' random masks."""
    if fmt not in FORMATS:
        raise UserError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    recipe = load_recipe(recipe_path)
    max_bytes = parse_size(max_shard_size)
    out = absolute(out_dir)
    protected = [_input_path(e.model) for e in recipe.inputs()]
    check_output_dir(out, overwrite, *protected, *[manager_dir(p) for p in protected])
    if not is_remote(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        sources = {}
        for entry in recipe.inputs():
            if entry.model not in sources:
                sources[entry.model] = open_source(entry.model)
                stack.callback(sources[entry.model].close)
        if fmt == "hf":
            with staged_output(out) as tmp:
                _merge_to_hf(recipe, sources, tmp, max_bytes, seed, progress)
        else:
            with tempfile.TemporaryDirectory(prefix=f".{out.name}.merge-", dir=None if is_remote(out) else out.parent) as tmp:
                _merge_to_hf(recipe, sources, Path(tmp), max_bytes, seed, progress)
                import_hf(tmp, out, overwrite=overwrite, progress=progress)
    return out
