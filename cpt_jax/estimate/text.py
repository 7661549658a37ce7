"""The estimate as a terminal report: the devices, then each phase, then the worst phase."""

from __future__ import annotations

from typing import Any

from cpt_jax.estimate.analytic import LIVE


def gb(x: float | None) -> str:
    """Bytes in decimal units (GB = 1e9), scaled to stay readable."""
    if x is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def flop(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.3f} {unit}"
    return f"{x:.0f} FLOP"


def format_estimate(r: dict[str, Any]) -> str:
    lines = _summary(r)
    for p in r["phases"]:
        lines += ["", *_phase(r, p)]
    lines += ["", *_worst(r)]
    return "\n".join(lines)


def _summary(r: dict) -> list[str]:
    a = r["phases"][0]["analytic"]
    mesh = " x ".join(f"{k}={v}" for k, v in a["mesh"].items())
    t = r.get("target")
    lines = []
    if t:
        lines.append(f"target {t['name']}: {t['num_devices']} x {t['device_kind']} ({t['topology']}"
                     + (f", {t['slices']} slices" if t["slices"] > 1 else "") + f"); usable per device "
                     f"{gb(t['memory_bytes_usable'])}: {t['usable_basis']}")
    lines.append(f"{r['devices']} devices, mesh {mesh}; {r['model_params'] / 1e6:,.1f} M parameters; "
                 f"attention: {r['attention']}; {len(r['phases'])} phase(s)")
    if r["compiled"] is None:
        source = "analytic only (not compiled)"
    elif t:
        source = f"compiled by the target's compiler ({r['note']}) and analytic"
    else:
        source = "compiled (XLA:CPU, fake devices) and analytic"
    lines.append(f"source: {source}")
    if "host_peak_rss_bytes" in r:
        lines.append(f"host memory of this process (peak RSS): {gb(r['host_peak_rss_bytes'])}")
    return lines


def _phase(r: dict, p: dict) -> list[str]:
    head = (f"phase {p['name']!r}: {p['global_batch_size']} x {p['seq_len']} = {p['tokens_per_step']:,} tokens "
            f"per step, grad_accum {p['grad_accum']}, rope_theta {p['rope_theta']:g}")
    c = p["compiled"]
    if c and "same_step_as" in c:
        head += f" (the same step as phase {c['same_step_as']!r}: compiled once)"
    lines = [head]
    if c and "oom" in c:
        lines.append(f"  the compiler: DOES NOT FIT: {c['oom']} (compile {c['compile_s']:.1f} s)")
        c = None
    lines += _table(p["analytic"], c)
    lines += _flops(r, p, c)
    lines += _device(p.get("device"))
    if c and c.get("breakdown"):
        lines += _breakdown(c["breakdown"])
    return lines


def _table(a: dict, c: dict | None) -> list[str]:
    c = c or {}
    cm = c.get("memory", {})
    rows = [("parameters", c.get("params"), a["params"]), ("optimizer state", c.get("opt_state"), a["opt_state"]),
            ("batch", c.get("batch"), a["batch"]), ("arguments (XLA)", cm.get("arguments"), None),
            ("temporaries", cm.get("temporaries"), a["temporaries"]),
            *[(f"  {k} (modelled)", None, v) for k, v in a["temporaries_by_kind"].items()],
            ("peak", c.get("peak"), a["peak"])]
    return [f"  {'per device':<26}{'compiled':>16}{'analytic':>16}",
            *[f"  {name:<26}{gb(x):>16}{gb(y):>16}" for name, x, y in rows],
            f"  (analytic temporaries: {LIVE})"]


def _flops(r: dict, p: dict, c: dict | None) -> list[str]:
    a, n = p["analytic"], r["devices"]
    line = "  FLOPs per step per device: " + (f"XLA cost analysis {flop(c['flops'])}, " if c and c["flops"] else "")
    line += f"model (6N + attention + LM head) {flop(a['model_flops'] / n)}"
    if a["hardware_flops"] != a["model_flops"]:
        line += f", with remat's recompute {flop(a['hardware_flops'] / n)}"
    if not c:
        return [line]
    lines = [line, f"  lower {c['lower_s']:.1f} s, compile {c['compile_s']:.1f} s"]
    if c.get("optimal_seconds") is not None:
        d = p.get("device")
        beside = f" (step time at MFU {d['mfu']:.2f}: {d['step_s']:.3g} s)" if d else ""
        lines.append(f"  TPU compiler's optimal_seconds: {c['optimal_seconds']:.3g} s per step{beside}; "
                     "loop bodies counted once")
    return lines


def _device(d: dict | None) -> list[str]:
    if not d:
        return []
    verdict = "FITS" if d["fits"] else "DOES NOT FIT"
    peak = f"peak {gb(d['peak_bytes'])} ({d['basis']})" if d["peak_bytes"] is not None else "peak over the limit"
    lines = [(f"  {d['kind']}: {gb(d['usable_bytes'])} usable; {peak}: {verdict} ({d['verdict']})"),
             (f"  step time at MFU {d['mfu']:.2f} ({d['peak_bf16_flops'] / 1e12:.0f} TFLOP/s bf16 peak): "
              f"{d['step_s']:.3g} s, {d['tokens_per_s_per_device']:,.0f} tokens/s per device")]
    if d["fits"]:
        return lines
    lines.append(f"  biggest item: {d['biggest']} ({gb(d['items'][d['biggest']])}); what would change it:")
    for ch in d["changes"]:
        effect = (f": peak {gb(ch['peak_bytes'])} (analytic)" if "peak_bytes" in ch
                  else f": not possible here: {ch['invalid']}" if "invalid" in ch else "")
        lines.append(f"    - {ch['change']}{effect}")
    lines.append(f"    (parameters and optimizer state alone need at least {d['min_devices_for_state']} "
                 "such devices with full sharding)")
    return lines


def _breakdown(b: dict) -> list[str]:
    kinds = ", ".join(f"{k} {gb(v)}" for k, v in sorted(b["by_kind"].items(), key=lambda kv: -kv[1]))
    lines = [f"  live at the program's peak (the compiler's live ranges; its buffer allocation above can be "
             f"larger): {gb(b['peak_bytes'])}: {kinds}", "  largest buffers live at the peak (per device):"]
    for x in b["buffers"]:
        lines.append(f"    {gb(x['bytes']):>10}  {x['kind']:<12} {x['shape']:<24} {x['what']}")
    return lines


def _worst(r: dict) -> list[str]:
    c = r["compiled"]
    if c and "oom" in c:
        peak = "over the limit (compiler)"
    else:
        peak = f"{gb((c or r['analytic'])['peak'])} {'compiled' if c else 'analytic'}"
    verdict = "" if r["fits"] is None else (": FITS" if r["fits"] else ": DOES NOT FIT")
    lines = [f"worst phase: {r['worst']!r} (peak {peak}){verdict}"]
    if c and not r.get("target"):
        lines.append(f"note: {r['note']}")
    if c:
        lines.append(f"note: {r['loop_note']}")
    return lines
