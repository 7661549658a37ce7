"""Metrics sinks: JSONL (the source of truth for reports and tests), TensorBoard, progress bar.

Only process 0 writes. On resume, records past the restored step are dropped, so the log of a
killed-and-resumed run reads exactly like the log of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash ends the usable log
    return out


class MetricsWriter:
    def __init__(self, run_dir: str | Path, *, enabled: bool, tensorboard: bool,
                 resume_point: tuple[int, int] | None):
        """resume_point: (global step, phase) of the restored checkpoint; None for a fresh start."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        records = read_jsonl(self.path)
        keep = []
        if resume_point is not None:
            step, phase = resume_point
            keep = [r for r in records if (r["step"], r.get("phase", 0)) <= (step, phase)]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(self.path)
        self._file = self.path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"),
                                     purge_step=resume_point[0] + 1 if resume_point else None)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: (float(v) if hasattr(v, "dtype") else v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            prefix = record.get("kind", "train")
            if prefix == "eval":
                prefix = f"eval/{record['source']}"
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "phase", "phase_step") and math.isfinite(value):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            if self._tb is not None:
                self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


class Progress:
    """A tqdm bar over the whole plan with loss, LR, tokens/s, MFU and ETA."""

    def __init__(self, total: int, initial: int, enabled: bool, echo: bool = True):
        """echo: print log lines when the bar is off (False on processes other than 0, so a
        multi-host launch shows each line once)."""
        self.bar = None
        self.echo = echo
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5)
        self.last = time.perf_counter()

    def update(self, n: int, postfix: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        elif self.echo:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
