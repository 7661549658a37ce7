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
    return "\n".join([*_summary(r), "", *_table(r), "", *_flops(r), *_device(r.get("device"))])


def _summary(r: dict) -> list[str]:
    mesh = " x ".join(f"{k}={v}" for k, v in r["analytic"]["mesh"].items())
    source = "compiled (XLA:CPU, fake devices) and analytic" if r["compiled"] else "analytic only (not compiled)"
    return [(f"{r['devices']} devices, mesh {mesh}; {r['model_params'] / 1e9:.2f} B parameters, "
             f"{r['tokens_per_step']:,} tokens per step"), f"source: {source}"]


def _table(r: dict) -> list[str]:
    a, c = r["analytic"], r["compiled"] or {}
    cm = c.get("memory", {})
    rows = [("parameters", c.get("params"), a["params"]), ("optimizer state", c.get("opt_state"), a["opt_state"]),
            ("batch", c.get("batch"), a["batch"]), ("arguments (XLA)", cm.get("arguments"), None),
            ("temporaries", cm.get("temporaries"), a["temporaries"]),
            *[(f"  {k} (modelled)", None, v) for k, v in a["temporaries_by_kind"].items()],
            ("peak", c.get("peak"), a["peak"])]
    return [f"{'per device':<28}{'compiled':>16}{'analytic':>16}",
            *[f"{name:<28}{gb(x):>16}{gb(y):>16}" for name, x, y in rows]]


def _flops(r: dict) -> list[str]:
    a, c, n = r["analytic"], r["compiled"], r["devices"]
    line = "FLOPs per step per device: " + (f"XLA cost analysis {flop(c['flops'])}, " if c else "")
    line += f"model (6N + attention + LM head) {flop(a['model_flops'] / n)}"
    if a["hardware_flops"] != a["model_flops"]:
        line += f", with remat's recompute {flop(a['hardware_flops'] / n)}"
    if not c:
        return [line]
    return [line, ("  (XLA's cost analysis counts each loop body once: scanned layers, gradient accumulation "
                   "and the blocked attention loop, so it is a lower bound for such steps)"),
            f"lower {c['lower_s']:.1f} s, compile {c['compile_s']:.1f} s", f"note: {r['note']}"]


def _device(d: dict | None) -> list[str]:
    if not d:
        return []
    verdict = "FITS" if d["fits"] else "DOES NOT FIT"
    lines = ["", (f"{d['kind']}: {d['memory_bytes'] / 1e9:.1f} GB, {d['usable_bytes'] / 1e9:.1f} GB counted as "
                  f"usable; peak {gb(d['peak_bytes'])} ({d['basis']}): {verdict}"),
             (f"step time at MFU {d['mfu']:.2f} ({d['peak_bf16_flops'] / 1e12:.0f} TFLOP/s bf16 peak): "
              f"{d['step_s']:.3g} s, {d['tokens_per_s_per_device']:,.0f} tokens/s per device")]
    if d["fits"]:
        return lines
    lines.append(f"biggest item: {d['biggest']} ({gb(d['items'][d['biggest']])}); what would change it:")
    for ch in d["changes"]:
        effect = (f": peak {gb(ch['peak_bytes'])} (analytic)" if "peak_bytes" in ch
                  else f": not possible here: {ch['invalid']}" if "invalid" in ch else "")
        lines.append(f"  - {ch['change']}{effect}")
    lines.append(f"  (parameters and optimizer state alone need at least {d['min_devices_for_state']} "
                 "such devices with full sharding)")
    return lines
