"""The estimate as a terminal report."""

from __future__ import annotations

from typing import Any


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
    a, c = r["analytic"], r["compiled"]
    mesh = " x ".join(f"{k}={v}" for k, v in a["mesh"].items())
    lines = [f"{r['devices']} devices, mesh {mesh}; {r['model_params'] / 1e9:.2f} B parameters, "
             f"{r['tokens_per_step']:,} tokens per step",
             f"source: {'compiled (XLA:CPU, fake devices) and analytic' if c else 'analytic only (not compiled)'}",
             "", f"{'per device':<28}{'compiled':>16}{'analytic':>16}"]
    cm = c["memory"] if c else {}
    rows = [("parameters", c and c["params"], a["params"]), ("optimizer state", c and c["opt_state"], a["opt_state"]),
            ("batch", c and c["batch"], a["batch"]), ("arguments (XLA)", cm.get("arguments"), None),
            ("temporaries", cm.get("temporaries"), a["temporaries"])]
    rows += [(f"  {k} (modelled)", None, v) for k, v in a["temporaries_by_kind"].items()]
    rows += [("peak", c and c["peak"], a["peak"])]
    lines += [f"{name:<28}{gb(x):>16}{gb(y):>16}" for name, x, y in rows]
    flops = f"XLA cost analysis {flop(c['flops'])}, " if c else ""
    lines += ["", f"FLOPs per step per device: {flops}model (6N + attention + LM head) "
                  f"{flop(a['model_flops'] / r['devices'])}"
                  + (f", with remat's recompute {flop(a['hardware_flops'] / r['devices'])}"
                     if a["hardware_flops"] != a["model_flops"] else "")]
    if c:
        lines.append("  (XLA's cost analysis counts each loop body once: scanned layers, gradient accumulation and "
                     "blocked attention loop, so it is a lower bound for such steps)")
        lines.append(f"lower {c['lower_s']:.1f} s, compile {c['compile_s']:.1f} s")
        lines.append(f"note: {r['note']}")
    d = r.get("device")
    if d:
        lines += ["", f"{d['kind']}: {d['memory_bytes'] / 1e9:.1f} GB, {d['usable_bytes'] / 1e9:.1f} GB counted as "
                      f"usable; peak {gb(d['peak_bytes'])} ({d['basis']}): "
                      f"{'FITS' if d['fits'] else 'DOES NOT FIT'}",
                  f"step time at MFU {d['mfu']:.2f} ({d['peak_bf16_flops'] / 1e12:.0f} TFLOP/s bf16 peak): "
                  f"{d['step_s']:.3g} s, {d['tokens_per_s_per_device']:,.0f} tokens/s per device"]
        if not d["fits"]:
            lines.append(f"biggest item: {d['biggest']} ({gb(d['items'][d['biggest']])}); what would change it:")
            for ch in d["changes"]:
                effect = (f"peak {gb(ch['peak_bytes'])} (analytic)" if "peak_bytes" in ch
                          else f"not possible here: {ch['invalid']}" if "invalid" in ch else "")
                lines.append(f"  - {ch['change']}" + (f": {effect}" if effect else ""))
            lines.append(f"  (parameters and optimizer state alone need at least {d['min_devices_for_state']} "
                         "such devices with full sharding)")
    return "\n".join(lines)
