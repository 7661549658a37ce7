"""What the compiled step holds at its memory peak, read from the compiler's own dumps.

Every XLA backend (TPU, GPU, CPU) writes, when asked to dump (`xla_dump_to`), the scheduled
program after optimisation and its buffer live ranges, including the list of buffers live at
the peak ("Live ranges at T (peak)"). Each such buffer is looked up in the program: its shape
(with the memory space: TPU VMEM/SMEM scratch is not HBM and is left out) and the JAX name
stack of the op that made it (`metadata={op_name=...}`: "state.opt_state[1].mu[...]" for an
argument, ".../jvp(...)/..." for the forward pass, ".../transpose(jvp(...))/..." for the
backward pass). The kind is attributed from those two facts, never modelled:

- parameters / optimizer / batch: the step's arguments, by their names (and, for a computed
  buffer shaped like a parameter: a bf16 copy or gathered weight in the forward pass counts as
  parameters, a float32 one in the backward pass as gradients, one after both as optimizer);
- logits: a buffer with a vocabulary-sized dimension that is not shaped like a parameter;
- activations: everything else made by the forward or backward pass.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

KINDS = ("parameters", "optimizer", "gradients", "activations", "logits", "batch", "other")
_PEAK = re.compile(r"^\s*Live ranges at \d+ \(peak\):\s*$")
_LIVE = re.compile(r"^\s*(?P<name>\S+?)\{(?P<index>[0-9,]*)\}: (?P<bytes>\d+) bytes")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+) = (?P<shape>.+?) (?P<op>[a-z][\w\-]*)\((?P<rest>.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_ARRAY = re.compile(r"(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\](?:\{(?P<layout>[^}]*)\})?")


def dump_options(directory: str | Path) -> dict:
    """Compiler options that make XLA write the program and its live ranges as text."""
    return {"xla_dump_to": str(directory), "xla_dump_hlo_as_text": True}


def _tuple_elements(shape: str) -> list[str]:
    """Top-level elements of a tuple shape "(a, (b, c), d)"."""
    inner, out, depth, start = shape.strip()[1:-1], [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch in "({[" and 1 or 0
        depth -= ch in ")}]" and 1 or 0
        if ch == "," and depth == 0:
            out.append(inner[start:i].strip())
            start = i + 1
    out.append(inner[start:].strip())
    return out


def element_shape(shape: str, index: str) -> str:
    """The shape of tuple element `index` ("3" or "3,1"; "" is the shape itself)."""
    for i in (int(x) for x in index.split(",") if x):
        if not shape.startswith("("):
            break
        shape = _tuple_elements(shape)[i]
    return shape


def parse_program(text: str) -> dict[str, tuple[str, str, str]]:
    """Instruction name -> (shape, opcode, op_name) over every computation of an HLO module."""
    out = {}
    for line in text.splitlines():
        if m := _INSTR.match(line):
            op_name = _OP_NAME.search(m.group("rest"))
            name = op_name.group(1).replace("\\'", "'") if op_name else ""  # HLO text escapes quotes
            out[m.group("name").lstrip("%")] = (m.group("shape"), m.group("op"), name)
    return out


def parse_peak(text: str) -> list[tuple[str, str, int]]:
    """(value name, tuple index, bytes) of every buffer live at the program's peak."""
    out, inside = [], False
    for line in text.splitlines():
        if _PEAK.match(line):
            inside = True
            continue
        if inside:
            m = _LIVE.match(line)
            if not m:
                break
            out.append((m.group("name"), m.group("index"), int(m.group("bytes"))))
    return out


def _array(shape: str) -> tuple[str, tuple[int, ...], int] | None:
    """(dtype, dims, memory space) of an array shape; None for tuples and tokens."""
    m = _ARRAY.fullmatch(shape.strip())
    if not m:
        return None
    dims = tuple(int(d) for d in m.group("dims").split(",") if d)
    space = re.search(r"S\((\d+)\)", m.group("layout") or "")
    return m.group("dtype"), dims, int(space.group(1)) if space else 0


def classify(op_name: str, dtype: str, dims: tuple[int, ...], param_shapes: set[tuple[int, ...]],
             vocab: set[int]) -> str:
    """The kind of a buffer from the name of the op that made it and its shape (module doc)."""
    if op_name.startswith(("state.params", "state.ema")):
        return "parameters"
    if op_name.startswith("state.opt_state"):
        return "optimizer"
    if op_name.startswith("batch"):
        return "batch"
    if op_name.startswith("state."):
        return "other"
    param_like = dims in param_shapes
    backward = "transpose(" in op_name
    forward = "jvp(" in op_name and not backward
    if param_like:
        if backward:
            return "gradients"
        if forward:
            return "parameters"
        return "optimizer" if dtype == "f32" else "parameters"
    if vocab & set(dims):
        return "logits"
    if forward or backward:
        return "activations"
    return "other"


def largest_buffers(dump_dir: str | Path, k: int, param_shapes: set[tuple[int, ...]], vocab: set[int]) -> dict:
    """The compiled step's peak, attributed: HBM bytes by kind, and the `k` largest buffers."""
    dump_dir = Path(dump_dir)
    ranges = sorted(dump_dir.glob("*after_optimizations-live-range.txt"), key=lambda p: p.stat().st_size)
    if not ranges:
        raise FileNotFoundError(f"the compiler wrote no live ranges under {dump_dir}")
    live = ranges[-1]  # the train step: the biggest module compiled with these options
    program = parse_program(Path(str(live).replace("-live-range.txt", ".txt")).read_text())
    by_kind: dict[str, int] = defaultdict(int)
    buffers = []
    for name, index, size in parse_peak(live.read_text()):
        shape, opcode, op_name = program.get(name, ("", "", ""))
        array = _array(element_shape(shape, index))
        if array is None:  # a tuple's index table, a token: a few bytes
            by_kind["other"] += size
            continue
        dtype, dims, space = array
        if space:  # on-chip scratch (TPU VMEM, SMEM), not device memory
            continue
        kind = classify(op_name, dtype, dims, param_shapes, vocab)
        by_kind[kind] += size
        buffers.append({"bytes": size, "kind": kind, "shape": f"{dtype}[{','.join(map(str, dims))}]",
                        "what": op_name or f"{opcode} {name}"})
    buffers.sort(key=lambda b: -b["bytes"])
    return {"peak_bytes": sum(by_kind.values()), "by_kind": {k: by_kind[k] for k in KINDS if by_kind[k]},
            "buffers": buffers[:k]}
