"""Held-out loss per source and downstream-task scores of one model, through the training code's
own setup and batch path (`build_setup`: pipeline, eval step, batch placement; the task
evaluator), so a run's in-loop numbers and a later evaluation of its checkpoint agree."""

from __future__ import annotations

from typing import Sequence

from cpt_jax.errors import UserError
from cpt_jax.eval.target import LoadedModel, checkpoint_phase, load_checkpoint, load_hf, resolve_plan
from cpt_jax.sharding import MeshConfig, make_mesh
from cpt_jax.tasks import TaskConfig
from cpt_jax.train.config import RunConfig
from cpt_jax.train.setup import build_setup
from cpt_jax.train.task_eval import TaskEvaluator

DEFAULT_TASK_BATCH = 8  # rows per task batch without a plan (rounded up to the data-parallel devices)


def task_shape(loaded: LoadedModel, cfg: RunConfig | None) -> tuple[int, int]:
    """(rows per batch, longest row): the plan's eval batch and seq_len (the in-loop shape), else
    the model's context length (what lm-eval truncates and windows at) and a small batch. Each
    batch's rows are only as long as its longest request needs (tasks.requests.pack_rows)."""
    if cfg is not None:
        return cfg.eval.batch_size or cfg.data.global_batch_size, cfg.data.seq_len
    dp = loaded.mesh.shape["data"] * loaded.mesh.shape["fsdp"]
    return -(-DEFAULT_TASK_BATCH // dp) * dp, loaded.model.max_position_embeddings


def evaluate(target: str | None = None, *, model_dir: str | None = None, plan: str | None = None,
             overrides: Sequence[str] = (), tasks: Sequence[TaskConfig] = (), batches: int | None = None,
             tokenizer: str | None = None, details: bool = False) -> dict:
    """Evaluate a run directory, checkpoint DIR[@STEP] or plan file (`target`), or an HF folder
    (`model_dir`): held-out sources when a plan is known (given, or the run directory's own),
    and `tasks` (plus the plan's eval.tasks). Returns {"target", "step", "heldout", "tasks"}
    (and "task_details": per document, the log-likelihood of each request, with `details`)."""
    if (target is None) == (model_dir is None):
        raise UserError("evaluate needs exactly one model: a run directory, a checkpoint or a plan, or an HF folder")
    cfg, ref = resolve_plan(target, plan, list(overrides))
    all_tasks = list(tasks) + [t for t in (cfg.eval.tasks if cfg is not None else []) if t.name not in
                               {u.name for u in tasks}]
    if cfg is None and not all_tasks:
        raise UserError(f"nothing to evaluate for {model_dir or target}: held-out sources come from a plan (or a run "
                        "directory's config.yaml), so give one, or give downstream tasks")
    phase = checkpoint_phase(ref if ref is not None else target, cfg) if cfg is not None and model_dir is None else 0
    setup = build_setup(cfg, phase=phase) if cfg is not None else None
    mesh = setup.mesh if setup is not None else make_mesh(MeshConfig())
    if model_dir is not None:
        loaded = load_hf(model_dir, cfg, mesh)
    else:
        loaded = load_checkpoint(ref if ref is not None else target, cfg, mesh)
    out: dict = {"target": loaded.description, "step": loaded.step, "heldout": {}, "tasks": {}}
    if setup is not None:
        out["heldout"] = setup.heldout(loaded.params, batches)
    if all_tasks:
        batch_size, seq_len = task_shape(loaded, cfg)
        evaluator = TaskEvaluator.build(all_tasks, tokenizer or loaded.tokenizer, graphdef=loaded.graphdef,
                                        param_shardings=loaded.shardings, mesh=loaded.mesh, batch_size=batch_size,
                                        seq_len=seq_len)
        if details:
            out["tasks"], out["task_details"] = evaluator.with_details(loaded.params)
        else:
            out["tasks"] = evaluator(loaded.params)
    return out
