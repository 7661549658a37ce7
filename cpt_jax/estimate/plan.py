"""`estimate`: does every phase of a plan fit its devices, and how fast should a step be?

Each phase (its own row length, batch, RoPE and micro-batch) is counted analytically and, unless
asked not to, its real train step is compiled: for a named accelerator target (targets.py) by
that target's own compiler on compile-only devices, else for N fake CPU devices by XLA:CPU.
Phases whose step is the same program are compiled once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
from typing import Any

import jax

from cpt_jax.config.base import to_dict
from cpt_jax.errors import ConfigError, UserError
from cpt_jax.estimate.analytic import live_temporaries, state_bytes, step_flops, temporaries
from cpt_jax.estimate.devices import DeviceKind, device_kind, usable_memory, usable_memory_basis
from cpt_jax.estimate.step import compile_step, without_data
from cpt_jax.model.attention import resolve
from cpt_jax.sharding.mesh import abstract_mesh, make_mesh
from cpt_jax.train.config import RunConfig
from cpt_jax.train.setup import build_setup

CPU_NOTE = ("compiled figures are XLA:CPU's buffer assignment for the partitioned program; GPU and TPU "
            "compilers fuse differently, so their temporaries differ (parameters and optimizer state do not)")
TARGET_NOTE = "compiled figures are the {compiler} compiler's buffer assignment for {target}, per device"
LOOP_NOTE = ("XLA's cost analysis counts each loop body once (scanned layers, gradient accumulation, "
             "blocked attention): its FLOPs and optimal_seconds are lower bounds for such steps")


def for_platform(cfg: RunConfig, platform: str) -> RunConfig:
    """The plan with `attention: auto` resolved for the platform compiled for (the target's, not
    this host's): splash on TPU, pallas_gpu on NVIDIA GPUs, blocked on CPU."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention=resolve(cfg.model.attention,
                                                                                           platform)))


def analytic(cfg: RunConfig, num_devices: int, phase: int = 0, device: str = "") -> dict[str, Any]:
    """Per-device counts of phase `phase` from shapes and shardings (no device, no compile); the
    temporaries as the compiler for `device` (a DeviceKind name, "" if unknown) lays them out."""
    run = cfg.phase_run(phase)
    mesh = abstract_mesh(cfg.mesh, num_devices)
    setup = build_setup(without_data(cfg), mesh, phase=phase)
    state = state_bytes(setup)
    temps = temporaries(run, mesh, state["params"], device)
    live = live_temporaries(temps)
    return {"mesh": dict(mesh.shape), **state, "temporaries": live, "temporaries_by_kind": temps,
            "peak": sum(state.values()) + live, **step_flops(run)}


def compiled_cpu(cfg: RunConfig, num_devices: int, phase: int = 0, breakdown: int = 0) -> dict[str, Any]:
    """Compile phase `phase`'s step for `num_devices` fake CPU devices: here if JAX already has
    exactly that many, else in a fresh process started with that device count."""
    devices = jax.devices("cpu")
    if len(devices) == num_devices:
        return compile_step(cfg, make_mesh(cfg.mesh, devices), phase=phase, breakdown=breakdown)
    return _compile_in_subprocess(cfg, num_devices, phase, breakdown)


def _compile_in_subprocess(cfg: RunConfig, num_devices: int, phase: int, breakdown: int) -> dict:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={num_devices}"])}
    request = json.dumps({"config": to_dict(cfg), "devices": num_devices, "phase": phase, "breakdown": breakdown})
    proc = subprocess.run([sys.executable, "-m", "cpt_jax.estimate.worker"], input=request, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"compiling the step for {num_devices} devices failed: {tail[0]}; "
                        "estimate without compiling, or fix the plan")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_signature(cfg: RunConfig, phase: int) -> str:
    """Phases with the same signature compile to the same program."""
    run = cfg.phase_run(phase)
    return json.dumps([run.data.seq_len, run.data.global_batch_size, to_dict(run.model)], sort_keys=True,
                      default=str)


def estimate_plan(cfg: RunConfig, num_devices: int | None = None, device: str | None = None, mfu: float = 0.4,
                  compile: bool = True, target: str | None = None, slices: int = 1,
                  breakdown: int = 0) -> dict[str, Any]:
    """Everything `cpt-jax estimate` reports, as a JSON-able dict (bytes and FLOPs per device).

    With `target`, the devices, their kind and the compiler are the target's; otherwise
    `num_devices` fake CPU devices and, optionally, the chip `device` to judge the fit against.
    The top-level "analytic", "compiled" and "device" are the worst phase's."""
    if not 0 < mfu <= 1:
        raise UserError(f"MFU must be in (0, 1], got {mfu}")
    devices, info = None, None
    if target:
        if num_devices is not None or device:
            raise UserError("--target names the devices already; drop --devices/--device")
        from cpt_jax.estimate.targets import compiler_options, target_devices

        if compile:
            devices, info = target_devices(target, slices)
        else:
            from cpt_jax.estimate.targets import parse_target

            info = parse_target(target, slices)
        num_devices, kind, platform = info.num_devices, info.device, info.platform
    else:
        if num_devices is None or num_devices < 1:
            raise UserError(f"the device count must be positive, got {num_devices}")
        kind, platform = (device_kind(device) if device else None), "cpu"
    cfg = for_platform(cfg, platform)
    model_device = kind.name if kind else ""
    result: dict[str, Any] = {"devices": num_devices, "model_params": cfg.model.num_params(),
                              "target": _target_dict(info) if info else None, "attention": cfg.model.attention,
                              "phases": [], "note": None}
    done: dict[str, dict] = {}  # step signature -> the first phase that compiled it
    for i, phase in enumerate(cfg.phases):
        run = cfg.phase_run(i)
        entry: dict[str, Any] = {"name": phase.name, "seq_len": run.data.seq_len,
                                 "global_batch_size": run.data.global_batch_size,
                                 "grad_accum": cfg.optimizer.grad_accum, "rope_theta": run.model.rope_theta,
                                 "tokens_per_step": run.data.global_batch_size * run.data.seq_len,
                                 "analytic": analytic(cfg, num_devices, i, model_device), "compiled": None}
        if compile:
            key = step_signature(cfg, i)
            if key in done:
                entry["compiled"] = {**done[key]["compiled"], "same_step_as": done[key]["name"]}
            else:
                if info:
                    mesh = make_mesh(cfg.mesh, devices)
                    entry["compiled"] = compile_step(cfg, mesh, phase=i, compiler_options=compiler_options(info),
                                                     breakdown=breakdown)
                else:
                    entry["compiled"] = compiled_cpu(cfg, num_devices, i, breakdown)
                done[key] = entry
        if kind:
            entry["device"] = fit(cfg, i, entry, num_devices, kind, mfu, info)
        entry["fits"] = entry["device"]["fits"] if kind else None
        result["phases"].append(entry)
    worst = max(result["phases"], key=_severity)
    result["worst"] = worst["name"]
    result.update({k: worst.get(k) for k in ("analytic", "compiled", "device", "fits")})
    result["tokens_per_step"] = worst["tokens_per_step"]
    compiler = {"tpu": "TPU (libtpu)", "cuda": "XLA GPU"}.get(platform, "")
    result["note"] = (TARGET_NOTE.format(compiler=compiler, target=info.name) if info and compile else CPU_NOTE)
    result["loop_note"] = LOOP_NOTE
    if compile and info:
        result["host_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def _severity(entry: dict) -> tuple:
    """Order phases from best to worst: not fitting first, then by peak (compiled if known)."""
    c = entry["compiled"] or {}
    peak = math.inf if "oom" in c else c.get("peak", entry["analytic"]["peak"])
    return (entry["fits"] is False, peak)


def _target_dict(info) -> dict[str, Any]:
    out = {k: getattr(info, k) for k in ("name", "kind", "platform", "topology", "slices", "num_devices",
                                         "memory_bytes", "memory_bytes_usable", "peak_flops")}
    out["device_kind"] = info.device.name
    out["usable_basis"] = ("the TPU compiler's available HBM" if info.kind == "tpu"
                           else usable_memory_basis(info.device))
    return out


def fit(cfg: RunConfig, phase: int, entry: dict, n: int, kind: DeviceKind, mfu: float, info=None) -> dict[str, Any]:
    """Does phase `phase` fit the chip, how long does a step take at `mfu`, and if it does not
    fit, what is biggest and what each usual change would bring (analytic what-ifs).

    TPU targets: the TPU compiler's verdict. GPU targets: the compiled peak against the memory
    JAX really gets (its preallocated share). Otherwise the compiled (XLA:CPU) or analytic peak
    against the chip's usable memory."""
    compiled, a = entry["compiled"], entry["analytic"]
    basis = "compiled" if compiled else "analytic"
    usable = info.memory_bytes_usable if info else usable_memory(kind)
    oom = compiled is not None and "oom" in compiled
    peak = None if oom else (compiled or a)["peak"]
    if info and info.kind == "tpu" and compiled:
        fits, verdict = not oom, "the TPU compiler's verdict"
    elif oom:  # a GPU compiler refusing too (e.g. a kernel's shared memory): its words say why
        fits, verdict = False, "the compiler's RESOURCE_EXHAUSTED"
    else:
        fits, verdict = peak <= usable, f"peak against {usable_memory_basis(kind)}"
    flops = a["model_flops"] / n
    out = {"kind": kind.name, "memory_bytes": kind.memory_bytes, "usable_bytes": usable,
           "peak_bf16_flops": kind.peak_bf16_flops, "basis": basis, "verdict": verdict, "peak_bytes": peak,
           "fits": fits, "mfu": mfu, "step_s": flops / (kind.peak_bf16_flops * mfu)}
    out["tokens_per_s_per_device"] = entry["tokens_per_step"] / n / out["step_s"]
    if not fits:
        run = cfg.phase_run(phase)
        items = {"parameters": a["params"], "optimizer state": a["opt_state"], **a["temporaries_by_kind"]}
        out["biggest"] = max(items, key=items.get)
        out["items"] = items
        out["changes"] = what_ifs(cfg, run, n, phase, kind.name)
        state = (a["params"] + a["opt_state"]) * n
        out["min_devices_for_state"] = math.ceil(state / usable)
    return out


def what_ifs(cfg: RunConfig, run: RunConfig, n: int, phase: int, device: str = "") -> list[dict[str, Any]]:
    """The usual changes, each with the analytic per-device peak it would give for the phase, and
    all of them together."""
    changes = list(_changes(run, n))
    combined = cfg
    for _, change in changes:
        combined = change(combined)
    out = []
    together = [("all of the above together", lambda c: combined)] if len(changes) > 1 else []
    for what, change in [*changes, *together]:
        entry: dict[str, Any] = {"change": what}
        try:
            entry["peak_bytes"] = analytic(change(cfg), n, phase, device)["peak"]
        except ConfigError as e:  # e.g. the micro-batch no longer splits over the devices
            entry["invalid"] = str(e)
        out.append(entry)
    if hasattr(cfg.model, "scan_layers") and not cfg.model.scan_layers:
        out.append({"change": "scan the layers (model.scan_layers=true): one compiled block, flat compile time"})
    return out


def _changes(run: RunConfig, n: int):
    """(description, config -> changed config) for each change that applies to this phase."""
    m, opt, mesh = run.model, run.optimizer, run.mesh
    replace = dataclasses.replace
    if mesh.data * mesh.dcn_data > 1:
        yield ("shard parameters and optimizer state over the data devices too: mesh data=1, fsdp=-1"
               + (", dcn_fsdp=dcn_data x dcn_fsdp, dcn_data=1" if mesh.dcn_data > 1 else ""),
               lambda c: replace(c, mesh=replace(c.mesh, data=1, fsdp=-1, dcn_data=1, dcn_fsdp=mesh.num_slices)))
    if m.remat != "full":
        yield ("recompute each block in the backward pass: model.remat=full",
               lambda c: replace(c, model=replace(c.model, remat="full")))
    rows = run.data.global_batch_size // opt.grad_accum // (mesh.resolve(n)[0] * mesh.resolve(n)[1])
    if rows > 1:
        accum = opt.grad_accum * rows
        yield (f"micro-batches of one row per device: optimizer.grad_accum={accum}",
               lambda c: replace(c, optimizer=replace(c.optimizer, grad_accum=accum)))
