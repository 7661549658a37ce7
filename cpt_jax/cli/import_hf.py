"""Import a local Hugging Face model folder (safetensors) into a cpt_jax model checkpoint.

Reads config.json and the safetensors shards tensor by tensor (fp32, bf16 or fp16), checks
every name and shape against the config first, and writes an orbax checkpoint (parameters
fp32, exact) plus the tokenizer files. Start a phase from it with `init: ckpt:OUT_DIR`.
"""

from __future__ import annotations

import argparse

from cpt_jax.cli.common import add_cpu_devices_argument, apply_cpu_devices



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", help="folder with config.json, *.safetensors and tokenizer files")
    parser.add_argument("out_dir", help="new cpt_jax model checkpoint (start a phase with init: ckpt:OUT_DIR)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "float32", "bfloat16"], default="float32",
                        help="compute dtype written into the model config (parameters are stored fp32, exact)")
    for axis in ("data", "fsdp", "tensor"):
        flags = [f"--mesh.{axis}"] + (["--fsdp"] if axis == "fsdp" else [])
        parser.add_argument(*flags, dest=f"mesh_{axis}", type=int, default=None, metavar="N",
                            help=f"place the parameters on a mesh with {axis}=N while importing "
                                 "(default: all on the first device; -1 takes the remaining devices)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    add_cpu_devices_argument(parser)


def run(args: argparse.Namespace) -> int:
    apply_cpu_devices(args.cpu_devices)
    import math

    import jax
    import yaml

    from cpt_jax.checkpoint.model_checkpoint import read_model_config
    from cpt_jax.config.base import from_dict, to_dict
    from cpt_jax.hf import import_hf
    from cpt_jax.model.config import canonical_dtype
    from cpt_jax.sharding import MeshConfig, make_mesh

    sizes = {axis: getattr(args, f"mesh_{axis}") for axis in ("data", "fsdp", "tensor")}
    mesh = None
    if any(v is not None for v in sizes.values()):
        given = {k: v for k, v in sizes.items() if v is not None}
        mesh_cfg = from_dict(MeshConfig, {"data": 1, "fsdp": 1, "tensor": 1, **given}, "mesh")
        devices = jax.devices()
        if -1 not in given.values():  # an import may use fewer devices than the machine has
            devices = devices[:math.prod(given.values())]
        mesh = make_mesh(mesh_cfg, devices)
    out = import_hf(args.hf_dir, args.out_dir, dtype=canonical_dtype(args.dtype), overwrite=args.overwrite, mesh=mesh,
                    progress=True)
    print(f"imported {args.hf_dir} -> {out}")
    print(f"model section for your plan (start a phase with init: ckpt:{out}):")
    print(yaml.safe_dump({"model": to_dict(read_model_config(out))}, sort_keys=False))
    return 0
