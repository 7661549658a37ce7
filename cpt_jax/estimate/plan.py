"""`estimate`: does a plan fit N devices of a kind, and how fast should a step be? Compiles the
plan's real train step for N fake CPU devices (or only counts, for sizes too slow to compile
on the host) and sets XLA's per-device buffers beside an analytic count."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from typing import Any

import jax

from cpt_jax.config.base import to_dict
from cpt_jax.errors import ConfigError, UserError
from cpt_jax.estimate.analytic import state_bytes, step_flops, temporaries
from cpt_jax.estimate.devices import device_kind
from cpt_jax.estimate.step import compile_step, without_data
from cpt_jax.sharding.mesh import abstract_mesh, make_mesh
from cpt_jax.train.config import RunConfig
from cpt_jax.train.setup import build_setup

HEADROOM = 0.9  # share of a chip's memory counted as usable (runtime, fragmentation, collectives: assumed)
CPU_NOTE = ("compiled figures are XLA:CPU's buffer assignment for the partitioned program; GPU and TPU "
            "compilers fuse differently, so their temporaries differ (parameters and optimizer state do not)")


def analytic(cfg: RunConfig, num_devices: int) -> dict[str, Any]:
    """Per-device counts from shapes and shardings (no device, no compile)."""
    mesh = abstract_mesh(cfg.mesh, num_devices)
    setup = build_setup(without_data(cfg), mesh)
    state = state_bytes(setup)
    temps = temporaries(cfg, mesh, state["params"])
    return {"mesh": dict(mesh.shape), **state, "temporaries": sum(temps.values()), "temporaries_by_kind": temps,
            "peak": sum(state.values()) + sum(temps.values()), **step_flops(cfg)}


def compiled(cfg: RunConfig, num_devices: int) -> dict[str, Any]:
    """Compile the step for `num_devices` fake CPU devices: here if JAX already has exactly that
    many, else in a fresh process started with that device count."""
    devices = jax.devices("cpu")
    if len(devices) == num_devices:
        out = compile_step(cfg, make_mesh(cfg.mesh, devices))
    else:
        out = _compile_in_subprocess(cfg, num_devices)
    m = out["memory"]
    out["peak"] = m["arguments"] + m["temporaries"] + m["outputs"] - m["aliased"]
    return out


def _compile_in_subprocess(cfg: RunConfig, num_devices: int) -> dict:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={num_devices}"])}
    request = json.dumps({"config": to_dict(cfg), "devices": num_devices})
    proc = subprocess.run([sys.executable, "-m", "cpt_jax.estimate.worker"], input=request, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"compiling the step for {num_devices} devices failed: {tail[0]}; "
                        "estimate without compiling, or fix the plan")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def estimate_plan(cfg: RunConfig, num_devices: int, device: str | None = None, mfu: float = 0.4,
                  compile: bool = True) -> dict[str, Any]:
    """Everything `cpt-jax estimate` reports, as a JSON-able dict (bytes and FLOPs per device)."""
    if num_devices < 1:
        raise UserError(f"the device count must be positive, got {num_devices}")
    if not 0 < mfu <= 1:
        raise UserError(f"MFU must be in (0, 1], got {mfu}")
    result: dict[str, Any] = {"devices": num_devices, "model_params": cfg.model.num_params(),
                              "tokens_per_step": cfg.tokens_per_step, "analytic": analytic(cfg, num_devices),
                              "compiled": compiled(cfg, num_devices) if compile else None, "note": CPU_NOTE}
    if device:
        result["device"] = fit(cfg, result, device_kind(device), mfu)
    return result


def fit(cfg: RunConfig, result: dict, kind, mfu: float) -> dict[str, Any]:
    """Does the step fit the chip, how long does it take at `mfu`, and if it does not fit, what
    is biggest and what each usual change would bring (analytic what-ifs)."""
    n = result["devices"]
    basis = "compiled" if result["compiled"] else "analytic"
    peak = result[basis]["peak"]
    usable = kind.memory_bytes * HEADROOM
    flops = result["analytic"]["model_flops"] / n
    out = {"kind": kind.name, "memory_bytes": kind.memory_bytes, "usable_bytes": usable,
           "peak_bf16_flops": kind.peak_bf16_flops, "basis": basis, "peak_bytes": peak, "fits": peak <= usable,
           "mfu": mfu, "step_s": flops / (kind.peak_bf16_flops * mfu)}
    out["tokens_per_s_per_device"] = cfg.tokens_per_step / n / out["step_s"]
    if not out["fits"]:
        a = result["analytic"]
        items = {"parameters": a["params"], "optimizer state": a["opt_state"], **a["temporaries_by_kind"]}
        out["biggest"] = max(items, key=items.get)
        out["items"] = items
        out["changes"] = what_ifs(cfg, n)
        state = (a["params"] + a["opt_state"]) * n
        out["min_devices_for_state"] = math.ceil(state / usable)
    return out


def what_ifs(cfg: RunConfig, n: int) -> list[dict[str, Any]]:
    """The usual changes, each with the analytic per-device peak it would give, and all of them
    together."""
    changes = list(_changes(cfg, n))
    combined = cfg
    for _, change in changes:
        combined = change(combined)
    out = []
    together = [("all of the above together", lambda c: combined)] if len(changes) > 1 else []
    for what, change in [*changes, *together]:
        entry: dict[str, Any] = {"change": what}
        try:
            entry["peak_bytes"] = analytic(change(cfg), n)["peak"]
        except ConfigError as e:  # e.g. the micro-batch no longer splits over the devices
            entry["invalid"] = str(e)
        out.append(entry)
    if hasattr(cfg.model, "scan_layers") and not cfg.model.scan_layers:
        out.append({"change": "scan the layers (model.scan_layers=true): one compiled block, flat compile time"})
    return out


def _changes(cfg: RunConfig, n: int):
    """(description, config -> changed config) for each change that applies to this plan."""
    m, opt, mesh = cfg.model, cfg.optimizer, cfg.mesh
    replace = dataclasses.replace
    if mesh.data * mesh.dcn_data > 1:
        yield ("shard parameters and optimizer state over the data devices too: mesh data=1, fsdp=-1"
               + (", dcn_fsdp=dcn_data x dcn_fsdp, dcn_data=1" if mesh.dcn_data > 1 else ""),
               lambda c: replace(c, mesh=replace(c.mesh, data=1, fsdp=-1, dcn_data=1, dcn_fsdp=mesh.num_slices)))
    if m.remat != "full":
        yield ("recompute each block in the backward pass: model.remat=full",
               lambda c: replace(c, model=replace(c.model, remat="full")))
    rows = cfg.data.global_batch_size // opt.grad_accum // (mesh.resolve(n)[0] * mesh.resolve(n)[1])
    if rows > 1:
        accum = opt.grad_accum * rows
        yield (f"micro-batches of one row per device: optimizer.grad_accum={accum}",
               lambda c: replace(c, optimizer=replace(c.optimizer, grad_accum=accum)))
