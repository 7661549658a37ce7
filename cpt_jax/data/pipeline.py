"""The training-time pipeline: packed rows from several sources, mixed at exact per-batch counts.

Where a batch's rows come from is arithmetic, not state. Each source k has an endless packed
token stream (see packing.py). A phase starts with per-source token offsets (what earlier phases
consumed); global batch `step` takes counts[k] rows of seq_len from source k, the m-th of them at
offset tokens[k] + (step * counts[k] + m) * seq_len. So every global batch is a pure function of
(seed, mixture, phase start offsets, step): identical for any number of hosts, grain workers or
restarts. Each host builds only its rows [lo, hi) of the global batch. Iterator state is the
per-source token offsets at the next step, a small JSON-able dict; resuming with another mixture
or batch size continues each stream where it stopped, without repeats.

grain does the loading: a MapDataset over this host's row indices materialises packed rows,
batches them, and prefetches with threads (ReadOptions) and optionally worker processes.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Mapping, Sequence

import grain
import numpy as np

from cpt_jax.data.config import DataConfig
from cpt_jax.data.errors import DataError
from cpt_jax.data.hashing import derive_key, sha256_file
from cpt_jax.data.mixture import MixturePlan, plan_mixture
from cpt_jax.data.packing import PackedStream
from cpt_jax.data.sources import Source, open_source

STATE_VERSION = 1
BATCH_KEYS = ("tokens", "segment_ids", "positions")


class _Cursor:
    """Where batch `step` of a phase reads: a pure function of (plan, base_step, base_tokens)."""

    def __init__(self, streams: dict[str, PackedStream], plan: MixturePlan, seq_len: int,
                 base_step: int, base_tokens: Mapping[str, int]):
        self.streams, self.plan, self.seq_len = streams, plan, seq_len
        self.base_step = base_step
        self.base_tokens = {n: int(base_tokens.get(n, 0)) for n in streams}

    def tokens_before(self, step: int) -> dict[str, int]:
        """Per-source stream offsets once batches base_step..step-1 are consumed."""
        done = step - self.base_step
        return {n: t + done * self.plan.rows(n) * self.seq_len for n, t in self.base_tokens.items()}

    def row(self, step: int, j: int) -> dict[str, np.ndarray]:
        """Row j of global batch `step`."""
        k, m = self.plan.order[j], self.plan.slot[j]
        name = self.plan.names[k]
        rows_before = (step - self.base_step) * self.plan.counts[k] + m
        return self.streams[name].read(self.base_tokens[name] + rows_before * self.seq_len, self.seq_len)

    def rows(self, step: int, lo: int, hi: int) -> dict[str, np.ndarray]:
        rows = [self.row(step, j) for j in range(lo, hi)]
        return {key: np.stack([r[key] for r in rows]) for key in BATCH_KEYS}


class _LocalRows:
    """grain random-access source: item i is local row i % n of step base_step + i // n."""

    def __init__(self, cursor: _Cursor, lo: int, hi: int, num_steps: int):
        self.cursor, self.lo, self.n, self.num_steps = cursor, lo, hi - lo, num_steps

    def __len__(self) -> int:
        return self.num_steps * self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        step, j = divmod(int(i), self.n)
        return self.cursor.row(self.cursor.base_step + step, self.lo + j)


class TrainIterator:
    """Yields this host's slice of successive global batches (dict of int32 [hi - lo, seq_len])."""

    def __init__(self, cursor: _Cursor, cfg: DataConfig, phase: int, lo: int, hi: int,
                 num_steps: int | None, mixture: Mapping[str, float]):
        self._cursor, self._cfg, self.phase, self.lo, self.hi = cursor, cfg, phase, lo, hi
        self._mixture = {n: float(w) for n, w in mixture.items()}
        self._num_steps = num_steps
        self._yielded = 0
        self._it = None

    @property
    def step(self) -> int:
        """The phase step of the next batch."""
        return self._cursor.base_step + self._yielded

    def _build(self):
        n = self.hi - self.lo
        steps = self._num_steps if self._num_steps is not None else (sys.maxsize // 4) // n
        ds = grain.MapDataset.source(_LocalRows(self._cursor, self.lo, self.hi, steps)).batch(n, drop_remainder=True)
        it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=self._cfg.read_threads,
                                                     prefetch_buffer_size=self._cfg.prefetch))
        if self._cfg.workers > 0:
            _absl_flags_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._cfg.workers,
                                                                   per_worker_buffer_size=self._cfg.prefetch))
        return iter(it_ds)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self._build()
        batch = next(self._it)
        self._yielded += 1
        return {k: np.asarray(batch[k], dtype=np.int32) for k in BATCH_KEYS}

    def state(self) -> dict:
        """JSON-able position after the batches yielded so far (not those prefetched)."""
        tokens = self._cursor.tokens_before(self.step)
        streams = self._cursor.streams
        return {
            "version": STATE_VERSION,
            "seed": self._cfg.seed,
            "phase": self.phase,
            "step": self.step,
            "mixture": dict(self._mixture),
            "rows_per_batch": {n: self._cursor.plan.rows(n) for n in streams},
            "seq_len": self._cfg.seq_len,
            "global_batch_size": self._cfg.global_batch_size,
            "tokens": tokens,
            "epochs": {n: streams[n].epoch_of(tokens[n]) for n in streams},
            "epoch_tokens": {n: streams[n].epoch_tokens for n in streams},
        }

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
        self._it = None


def _absl_flags_parsed() -> None:
    """grain 0.2.18's worker start reads an absl flag, which fails unless flags were parsed (only
    absl.app programs parse them): google/grain#1355, fixed upstream in #1362. Mark them parsed,
    keeping every default, as that issue suggests."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class DataPipeline:
    """Opens and validates the sources of a DataConfig; hands out train iterators and eval batches.

    vocab_size: the model's vocabulary, used by synthetic sources whose vocab_size is 0.
    """

    def __init__(self, cfg: DataConfig, vocab_size: int | None = None):
        self.cfg = cfg
        self.sources: dict[str, Source] = {}
        self._streams: dict[str, PackedStream] = {}
        self._eval_cache: dict[tuple, list[dict]] = {}
        self._open(vocab_size)

    def _open(self, vocab_size: int | None) -> None:
        """Open the sources; synthetic ones that take the model's vocab wait until it is known."""
        for name, scfg in self.cfg.sources.items():
            if name in self.sources or (scfg.kind == "synthetic" and not scfg.vocab_size and vocab_size is None):
                continue
            self.sources[name] = open_source(name, scfg, vocab_size)
            self._streams[name] = PackedStream(self.sources[name].train, derive_key("train", self.cfg.seed, name))
        fingerprints = {s.fingerprint: n for n, s in self.sources.items() if s.fingerprint is not None}
        if len(fingerprints) > 1:
            names = ", ".join(f"'{n}'" for n in fingerprints.values())
            raise DataError(f"sources {names} were tokenized with different tokenizers; prepare every source "
                            "with the run's tokenizer")

    def _require_open(self) -> None:
        waiting = sorted(set(self.cfg.sources) - set(self.sources))
        if waiting:
            raise DataError(f"synthetic source(s) {', '.join(waiting)} take the model's vocab_size: pass "
                            "vocab_size to DataPipeline or call check(vocab_size=...) first")

    # -- checks ---------------------------------------------------------------------------------
    def check(self, vocab_size: int, tokenizer_fingerprint: str | None = None, *,
              tokenizer: str | None = None) -> None:
        """Refuse data the model cannot embed, or data from another tokenizer than the run's
        (given as its sha256, or as the path of the tokenizer file)."""
        if tokenizer:
            if not Path(tokenizer).is_file():
                raise DataError(f"tokenizer {tokenizer} does not exist; set `tokenizer` to the file used by prepare")
            tokenizer_fingerprint = sha256_file(tokenizer)
        self._open(vocab_size)
        for name, src in self.sources.items():
            if src.max_token_id >= vocab_size:
                raise DataError(f"source '{name}' holds token id {src.max_token_id} but the model's vocab_size is "
                                f"{vocab_size} (its tokenizer has {src.vocab_size} ids): prepare the data with the "
                                "model's tokenizer, or fix model.vocab_size")
            if tokenizer_fingerprint and src.fingerprint and src.fingerprint != tokenizer_fingerprint:
                raise DataError(f"source '{name}' was tokenized with a different tokenizer (sha256 "
                                f"{src.fingerprint[:12]}...) than the run's ({tokenizer_fingerprint[:12]}...): rerun "
                                "`cpt-jax prepare` with the run's tokenizer, or point `tokenizer` at the one used")

    def plan(self, mixture: Mapping[str, float]) -> MixturePlan:
        self._require_open()
        plan = plan_mixture(mixture, self.cfg.global_batch_size, self.sources)
        for name in plan.names:
            if self._streams[name].epoch_tokens == 0:
                raise DataError(f"source '{name}' has no training documents; check its prepare output "
                                "(all documents held out or skipped?) or drop it from the mixture")
        return plan

    def describe(self) -> dict:
        return {n: s.info for n, s in self.sources.items()}

    def eval_sources(self) -> list[str]:
        """Sources with held-out documents."""
        self._require_open()
        return [n for n, s in self.sources.items() if int(np.sum(s.eval.lengths)) > 0]

    def phase_start_tokens(self, phases: Sequence[tuple[Mapping[str, float], int]], phase: int) -> dict[str, int]:
        """Per-source stream offsets at step 0 of `phase`, given every phase's (mixture, steps):
        what the earlier phases consumed, so each phase continues the streams where the one
        before stopped. Equal to the last phase's final `state()["tokens"]`."""
        tokens = {n: 0 for n in self.sources}
        for mixture, steps in phases[:phase]:
            plan = self.plan(mixture)
            for n in plan.names:
                tokens[n] += steps * plan.rows(n) * self.cfg.seq_len
        return tokens

    # -- training -------------------------------------------------------------------------------
    def train_iterator(self, mixture: Mapping[str, float], phase: int = 0, start_step: int = 0,
                       process_index: int = 0, process_count: int = 1, *,
                       start_tokens: Mapping[str, int] | None = None, row_range: tuple[int, int] | None = None,
                       num_steps: int | None = None) -> TrainIterator:
        """Batches start_step, start_step + 1, ... of a phase (steps count from 0 in each phase).

        start_tokens: per-source stream offsets at step 0 of this phase: `phase_start_tokens(plan,
        phase)`, equal to `state()["tokens"]` at the end of the previous phase. Required after
        phase 0, so a new phase never silently re-reads what earlier phases trained on ({} starts
        every stream afresh on purpose). row_range: this host's rows
        of the global batch (see `host_row_range`); default: the process_index-th of
        process_count equal slices. num_steps: stop after this many batches (default: endless).
        """
        plan = self.plan(mixture)
        base = _Cursor(self._streams, plan, self.cfg.seq_len, 0, _phase_start(phase, start_tokens))
        cursor = _Cursor(self._streams, plan, self.cfg.seq_len, start_step, base.tokens_before(start_step))
        lo, hi = self._row_range(process_index, process_count, row_range)
        return TrainIterator(cursor, self.cfg, phase, lo, hi, num_steps, mixture)

    def resume(self, state: Mapping, process_index: int = 0, process_count: int = 1, *,
               mixture: Mapping[str, float] | None = None, row_range: tuple[int, int] | None = None,
               num_steps: int | None = None) -> TrainIterator:
        """Continue from `TrainIterator.state()`. With the same config the batches are those the
        first run would have produced; with a new mixture, batch size or seq_len, every source
        continues where it stopped."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data iterator state has version {state.get('version')}, expected {STATE_VERSION}")
        if state["seed"] != self.cfg.seed:
            raise DataError(f"data.seed is {self.cfg.seed} but the checkpoint's data stream used seed "
                            f"{state['seed']}; set data.seed back to resume the same stream")
        mixture = dict(state["mixture"]) if mixture is None else mixture
        plan = self.plan(mixture)
        cursor = _Cursor(self._streams, plan, self.cfg.seq_len, int(state["step"]), state["tokens"])
        lo, hi = self._row_range(process_index, process_count, row_range)
        return TrainIterator(cursor, self.cfg, int(state["phase"]), lo, hi, num_steps, mixture)

    def global_batch(self, mixture: Mapping[str, float], phase: int = 0, step: int = 0, *,
                     start_tokens: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """The whole global batch `step` of a phase, without grain (tests, debugging)."""
        cursor = _Cursor(self._streams, self.plan(mixture), self.cfg.seq_len, 0, _phase_start(phase, start_tokens))
        return cursor.rows(step, 0, self.cfg.global_batch_size)

    def _row_range(self, process_index: int, process_count: int, row_range) -> tuple[int, int]:
        b = self.cfg.global_batch_size
        if row_range is not None:
            lo, hi = row_range
            if not 0 <= lo < hi <= b:
                raise DataError(f"row_range {row_range} is not inside the global batch of {b} rows")
            return lo, hi
        if process_count < 1 or not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} is not in [0, {process_count})")
        if b % process_count:
            raise DataError(f"data.global_batch_size {b} is not divisible by the {process_count} processes")
        per = b // process_count
        return process_index * per, (process_index + 1) * per

    # -- evaluation -----------------------------------------------------------------------------
    def eval_batches(self, source: str, num_batches: int, batch_size: int | None = None) -> list[dict]:
        """Fixed packed batches of a source's held-out documents (stored order, one pass; the last
        rows are padding if the split runs out). Fewer than num_batches if the split is small."""
        self._require_open()
        if source not in self.sources:
            raise DataError(f"unknown source '{source}'; data.sources defines {', '.join(sorted(self.sources))}")
        bs = batch_size or self.cfg.global_batch_size
        key = (source, num_batches, bs)
        if key not in self._eval_cache:
            stream = PackedStream(self.sources[source].eval, key=None)
            if stream.epoch_tokens == 0:
                raise DataError(f"source '{source}' has no held-out documents; rerun `cpt-jax prepare` with "
                                "--eval-docs N, --eval-fraction F or --eval-inputs PATH")
            seq = self.cfg.seq_len
            available = math.ceil(stream.epoch_tokens / seq)
            batches = []
            for b in range(min(num_batches, math.ceil(available / bs))):
                rows = [stream.read((b * bs + i) * seq, seq) for i in range(bs)]
                batches.append({k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS})
            self._eval_cache[key] = batches
        return self._eval_cache[key]


def _phase_start(phase: int, start_tokens: Mapping[str, int] | None) -> Mapping[str, int]:
    if start_tokens is None:
        if phase > 0:
            raise DataError(f"phase {phase} needs start_tokens (where earlier phases left each source): pass "
                            "pipe.phase_start_tokens([(mixture, steps), ...], phase), or {} to restart every stream")
        return {}
    return start_tokens


def host_row_range(sharding, global_batch_size: int, seq_len: int) -> tuple[int, int]:
    """Rows [lo, hi) of the global batch that this process's devices hold under `sharding`."""
    index_map = sharding.addressable_devices_indices_map((global_batch_size, seq_len))
    spans = sorted({(s[0].start or 0, global_batch_size if s[0].stop is None else s[0].stop)
                    for s in index_map.values()})
    lo, hi = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != hi - lo:
        raise DataError(f"this process holds non-contiguous rows {spans} of the batch; order the mesh devices "
                        "by process (jax.make_mesh does) so each host holds one contiguous slice")
    return lo, hi


def to_global_batch(local: Mapping[str, np.ndarray], sharding, global_batch_size: int) -> dict:
    """Assemble the global jax.Array batch from every process's local rows."""
    import jax

    return {k: jax.make_array_from_process_local_data(sharding, v, (global_batch_size, *v.shape[1:]))
            for k, v in local.items()}
