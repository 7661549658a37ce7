"""Everything a run compiles and reads, built once from its config: the mesh, the data pipeline,
the model graph and shardings, the optimizer, and the jitted train and eval steps.

Training and `cpt-jax eval` build the same `RunSetup`, so a checkpoint evaluated later is fed
exactly the batches, shardings and eval step that the training loop used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import optax
from jax.sharding import Mesh, NamedSharding

from cpt_jax.data import DataPipeline
from cpt_jax.model.params import abstract_model, abstract_params, param_shardings, with_shardings
from cpt_jax.schedules import build_plan_schedule
from cpt_jax.sharding import make_mesh
from cpt_jax.sharding.placement import batch_sharding, place_batch
from cpt_jax.train.config import RunConfig
from cpt_jax.train.freeze import Freeze, build_freeze
from cpt_jax.train.heldout import heldout_losses
from cpt_jax.train.mesh_fit import check_run_fits_mesh
from cpt_jax.train.optimizer import make_optimizer
from cpt_jax.train.state import TrainState, train_state_shardings
from cpt_jax.train.step import jit_train_step, make_eval_step, make_train_step


@dataclass(frozen=True)
class RunSetup:
    cfg: RunConfig
    mesh: Mesh
    pipe: DataPipeline
    graphdef: Any
    param_shardings: Any  # tree like params
    abstract_params: Any  # ShapeDtypeStructs carrying param_shardings (restore targets)
    tx: optax.GradientTransformation
    freeze: Freeze  # what trains: the optimizer state covers freeze.view(params) only
    shardings: TrainState  # of the whole train state
    abstract_opt: Any
    batch_sharding: NamedSharding
    train_step: Callable  # (state, batch) -> (state, metrics), jitted, state donated
    eval_step: Callable  # (params, batch) -> {nll_sum, tokens}, jitted
    steps: list[int]  # per phase
    starts: list[int]  # global step at which each phase starts

    @property
    def data_parallel(self) -> int:
        return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def heldout(self, params: Any, num_batches: int | None = None, batch_size: int | None = None) -> dict:
        """{source: {loss, ppl, tokens}} on every source's held-out split; the one eval batch path."""
        cfg = self.cfg
        bs = batch_size or cfg.eval.batch_size or cfg.data.global_batch_size
        return heldout_losses(self.eval_step, params, self.pipe, num_batches or cfg.eval.batches, bs,
                              lambda b: place_batch(b, self.batch_sharding))


def build_setup(cfg: RunConfig, mesh: Mesh | None = None, phase: int = 0) -> RunSetup:
    """The setup of one phase: its data and model sections with the phase's overrides (row length,
    batch, RoPE settings; see RunConfig.phase_run) on the whole plan's schedule. Parameter shapes
    are the same in every phase. Nothing is allocated or compiled here: jit compiles on the first
    call."""
    plan, cfg = cfg, cfg.phase_run(phase)
    mesh = mesh or make_mesh(cfg.mesh)
    check_run_fits_mesh(cfg, mesh)  # every size the mesh splits, before anything compiles
    pipe = DataPipeline(cfg.data, vocab_size=cfg.model.vocab_size)
    pipe.check(vocab_size=cfg.model.vocab_size, tokenizer=cfg.tokenizer or None)
    steps, starts = plan.phase_steps(), plan.phase_starts()
    plan_schedule = build_plan_schedule([(p.name, p.schedule, n) for p, n in zip(cfg.phases, steps)])
    # A branch's phases are its own schedule, on a global clock that continues from its branch point.
    schedule = (lambda s: plan_schedule(s - cfg.base_step)) if cfg.base_step else plan_schedule
    graphdef, _ = abstract_model(cfg.model, mesh)
    p_shardings = param_shardings(cfg.model, mesh)
    tx = make_optimizer(cfg.optimizer)
    abstract = with_shardings(abstract_params(cfg.model), p_shardings)
    freeze = build_freeze(cfg.optimizer.freeze, abstract, cfg.model.num_layers)
    shardings = train_state_shardings(tx, p_shardings, abstract, mesh, ema=cfg.optimizer.ema_decay > 0, freeze=freeze)
    abstract_opt = with_shardings(jax.eval_shape(tx.init, freeze.view(abstract)), shardings.opt_state)
    step_fn = make_train_step(graphdef, tx, schedule, cfg.optimizer, mesh, num_sources=len(cfg.data.sources),
                              freeze=freeze)
    return RunSetup(cfg=cfg, mesh=mesh, pipe=pipe, graphdef=graphdef, param_shardings=p_shardings,
                    abstract_params=abstract, tx=tx, freeze=freeze, shardings=shardings, abstract_opt=abstract_opt,
                    batch_sharding=batch_sharding(mesh), train_step=jit_train_step(step_fn, shardings, mesh),
                    eval_step=make_eval_step(graphdef, p_shardings, mesh), steps=steps, starts=starts)
