"""Held-out loss and perplexity of a checkpoint on every source of a plan (learning and forgetting)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cpt_jax.cli.train import add_cpu_devices_argument, apply_cpu_devices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="plan YAML whose data sources (and model) to use")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    parser.add_argument("--ckpt", default=None,
                        help="DIR[@STEP]: a run directory or model checkpoint (default: the plan's run_dir)")
    parser.add_argument("--batches", type=int, default=None, help="eval batches per source (default: eval.batches)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    add_cpu_devices_argument(parser)


def run(args: argparse.Namespace) -> int:
    apply_cpu_devices(args.cpu_devices)
    import jax

    from cpt_jax.checkpoint.params import load_model_checkpoint, read_model_config
    from cpt_jax.cli.errors import UserError
    from cpt_jax.config.run import load_run_config
    from cpt_jax.data import DataPipeline
    from cpt_jax.eval import heldout_losses
    from cpt_jax.sharding import make_mesh
    from cpt_jax.train.init import check_compatible, parse_ckpt_ref
    from cpt_jax.train.state import abstract_model, param_shardings
    from cpt_jax.train.step import batch_sharding, make_eval_step

    cfg = load_run_config(args.config, args.overrides)
    path, step = parse_ckpt_ref(args.ckpt or cfg.run_dir)
    if not Path(path).exists():
        raise UserError(f"checkpoint {path} does not exist; train first or pass --ckpt")
    check_compatible(read_model_config(path, step), cfg.model, "--ckpt")
    mesh = make_mesh(cfg.mesh)
    graphdef, _ = abstract_model(cfg.model, mesh)
    shardings = param_shardings(cfg.model, mesh)
    params, _, meta = load_model_checkpoint(path, shardings=shardings, step=step)
    pipe = DataPipeline(cfg.data, vocab_size=cfg.model.vocab_size)
    pipe.check(vocab_size=cfg.model.vocab_size, tokenizer=cfg.tokenizer or None)
    bs = cfg.eval.batch_size or cfg.data.global_batch_size
    sharding = batch_sharding(mesh)
    results = heldout_losses(make_eval_step(graphdef, shardings, mesh), params, pipe, args.batches or cfg.eval.batches,
                             bs, lambda b: jax.device_put(b, sharding))
    print(f"{'source':<16} {'loss':>8} {'ppl':>10} {'tokens':>10}")
    for source, r in results.items():
        print(f"{source:<16} {r['loss']:>8.4f} {r['ppl']:>10.2f} {int(r['tokens']):>10,}")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": str(path), "step": meta.get("step"), "results": results},
                                              indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
