"""Import a local Hugging Face model folder (safetensors) into a cpt_jax checkpoint."""

from __future__ import annotations

import argparse

from cpt_jax.cli.train import add_cpu_devices_argument, apply_cpu_devices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", help="folder with config.json, *.safetensors and tokenizer files")
    parser.add_argument("out_dir", help="new cpt_jax model checkpoint (use it as init: ckpt:OUT_DIR)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="compute dtype recorded in the model config (parameters are stored fp32)")
    parser.add_argument("--fsdp", type=int, default=0, metavar="N",
                        help="shard the parameters over N devices while importing (0: one device)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    add_cpu_devices_argument(parser)


def run(args: argparse.Namespace) -> int:
    apply_cpu_devices(args.cpu_devices)
    import yaml

    from cpt_jax.config.base import to_dict
    from cpt_jax.hf import import_hf
    from cpt_jax.checkpoint.params import read_model_config
    from cpt_jax.sharding import MeshConfig, make_mesh

    mesh = make_mesh(MeshConfig(data=1, fsdp=args.fsdp, tensor=1)) if args.fsdp else None
    out = import_hf(args.hf_dir, args.out_dir, dtype=args.dtype, overwrite=args.overwrite, mesh=mesh)
    print(f"imported {args.hf_dir} -> {out}")
    print("model section for your plan (start a phase with init: ckpt:" + str(out) + "):")
    print(yaml.safe_dump({"model": to_dict(read_model_config(out))}, sort_keys=False))
    return 0
