"""The training-time pipeline: packed rows from several sources, mixed at planned per-batch counts.

Where a batch's rows come from is arithmetic, not state. Each source has an endless packed token
stream (see packing.py), read as rows of seq_len. A phase starts with per-source offsets (what
earlier phases consumed). The mixture plan says how many rows of each source batch `step` holds
and how many all batches before it held (cumulative rounding, see mixture.py), so the n-th row a
source gives in a phase is known for any step in O(#sources). That n-th row (counted over the
source's whole stream) is read from row position block_position(n): the stream is cut into
blocks of W rows (W = BLOCK_ROWS, or one epoch's rows for a small source) and inside a block the
n-th row read is row (n * a) mod W, a stride coprime to W. So the rows one batch takes from a
source lie far apart in its stream (one long document cannot fill a batch), each row of a block
is read exactly once, and blocks are read in stream order: nothing is re-read or skipped, and a
source's epochs are consumed in order (a block may straddle two epochs).

Every global batch is thus a pure function of (seed, mixture, phase start offsets, step):
identical for any number of hosts, grain workers or restarts. Each host builds only its rows
[lo, hi) of the global batch. Iterator state is the per-source offsets at the next step, a small
JSON-able dict; resuming with another mixture or batch size continues each stream where it
stopped, without repeats (with another seq_len, at the next block boundary). Every row carries
`source_ids`: the index of its source among the sorted names of data.sources, for per-source loss.

grain does the loading: a MapDataset over this host's row indices materialises packed rows,
batches them, and prefetches with threads (ReadOptions) and optionally worker processes.
"""

from __future__ import annotations

import math
import sys
from typing import Mapping, Sequence

import grain
import numpy as np

from cpt_jax.data.config import DataConfig
from cpt_jax.errors import DataError
from cpt_jax.data.hashing import derive_key, sha256_file
from cpt_jax.data.mixture import MixturePlan, plan_mixture
from cpt_jax.data.packing import PackedStream
from cpt_jax.data.sources import Source, open_source
from cpt_jax.data.tokenizer import tokenizer_file

STATE_VERSION = 2
BATCH_KEYS = ("tokens", "segment_ids", "positions", "source_ids")
BLOCK_ROWS = 1024  # rows per block of a source's stream inside which reads are spread
_GOLDEN = 0.6180339887498949


def block_rows(epoch_tokens: int, seq_len: int) -> int:
    """W: BLOCK_ROWS, or fewer so that a block never holds more than one epoch."""
    return max(1, min(BLOCK_ROWS, epoch_tokens // seq_len))


def block_position(n: int, width: int) -> int:
    """Row position of the n-th row read from a stream cut into blocks of `width` rows."""
    stride = max(1, round(width * _GOLDEN))
    while math.gcd(stride, width) != 1:
        stride += 1
    block, i = divmod(n, width)
    return block * width + (i * stride) % width


def _start(tokens: int, seq_len: int) -> tuple[int, int]:
    """(origin, rows) of a token offset: rows of seq_len counted from origin."""
    return (0, tokens // seq_len) if tokens % seq_len == 0 else (tokens, 0)


class _Cursor:
    """Where batch `step` of a phase reads: a pure function of (plan, base_step, origins, rows).

    origin[n] + rows[n] * seq_len is the token offset of source n at phase step base_step: rows
    counts the rows read from the block grid that starts at origin (0 unless seq_len changed)."""

    def __init__(self, streams: dict[str, PackedStream], plan: MixturePlan, seq_len: int, base_step: int,
                 origin: Mapping[str, int], rows: Mapping[str, int], source_index: Mapping[str, int]):
        self.streams, self.plan, self.seq_len = streams, plan, seq_len
        self.base_step = base_step
        self.origin = {n: int(origin.get(n, 0)) for n in streams}
        self.base_rows = {n: int(rows.get(n, 0)) for n in streams}
        self.source_index = dict(source_index)
        self.width = {n: block_rows(s.epoch_tokens, seq_len) for n, s in streams.items()}

    def rows_before(self, step: int) -> dict[str, int]:
        """Per-source rows read once batches base_step..step-1 are consumed."""
        now, then = self.plan.cumulative(step), self.plan.cumulative(self.base_step)
        extra = {n: a - b for n, a, b in zip(self.plan.names, now, then)}
        return {n: r + extra.get(n, 0) for n, r in self.base_rows.items()}

    def tokens_before(self, step: int) -> dict[str, int]:
        """Per-source stream offsets (tokens consumed) once batches base_step..step-1 are consumed."""
        return {n: self.origin[n] + r * self.seq_len for n, r in self.rows_before(step).items()}

    def row(self, step: int, j: int) -> dict[str, np.ndarray]:
        """Row j of global batch `step`."""
        order, slot = self.plan.layout(step)
        k = order[j]
        name = self.plan.names[k]
        n = self.base_rows[name] + self.plan.cumulative(step)[k] - self.plan.cumulative(self.base_step)[k] + slot[j]
        position = block_position(n, self.width[name])
        row = self.streams[name].read(self.origin[name] + position * self.seq_len, self.seq_len)
        row["source_ids"] = np.full(self.seq_len, self.source_index[name], np.int32)
        return row

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


def consumption(cursor: _Cursor, step: int) -> dict[str, dict[str, float]]:
    """{source: {tokens, epochs}} consumed once batches before `step` are done: epochs is
    tokens / tokens per epoch, so 2.5 means every document was trained on two or three times."""
    tokens = cursor.tokens_before(step)
    return {n: {"tokens": t, "epochs": t / cursor.streams[n].epoch_tokens if cursor.streams[n].epoch_tokens else 0.0}
            for n, t in tokens.items()}


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

    @property
    def plan(self) -> MixturePlan:
        return self._cursor.plan

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

    def consumption(self) -> dict[str, dict[str, float]]:
        """Tokens and epochs of each source consumed by the batches yielded so far."""
        return consumption(self._cursor, self.step)

    def realised(self) -> dict[str, float]:
        """Share of this phase's rows so far that each source got (the plan's cumulative rounding)."""
        return self.plan.realised(self.step)

    def state(self) -> dict:
        """JSON-able position after the batches yielded so far (not those prefetched)."""
        c = self._cursor
        rows = c.rows_before(self.step)
        used = self.consumption()
        return {
            "version": STATE_VERSION,
            "seed": self._cfg.seed,
            "phase": self.phase,
            "step": self.step,
            "mixture": dict(self._mixture),
            "realised": self.realised(),
            "seq_len": self._cfg.seq_len,
            "global_batch_size": self._cfg.global_batch_size,
            "origin": dict(c.origin),
            "rows": rows,
            "tokens": {n: u["tokens"] for n, u in used.items()},
            "epochs": {n: u["epochs"] for n, u in used.items()},
            "epoch_tokens": {n: s.epoch_tokens for n, s in c.streams.items()},
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
            local = tokenizer_file(tokenizer)
            if not local.is_file():
                raise DataError(f"tokenizer {tokenizer} does not exist; set `tokenizer` to the file used by prepare")
            tokenizer_fingerprint = sha256_file(local)
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

    def eval_sources(self) -> list[str]:
        """Sources with held-out documents."""
        self._require_open()
        return [n for n, s in self.sources.items() if int(np.sum(s.eval.lengths)) > 0]

    @property
    def source_names(self) -> tuple[str, ...]:
        """Names of data.sources, sorted: batch['source_ids'] indexes this tuple."""
        return tuple(sorted(self.cfg.sources))

    def phase_start_tokens(self, phases: Sequence[tuple[Mapping[str, float], int]], phase: int) -> dict[str, int]:
        """Per-source stream offsets at step 0 of `phase`, given every phase's (mixture, steps):
        what the earlier phases consumed, so each phase continues the streams where the one
        before stopped. Equal to the last phase's final `state()["tokens"]`."""
        tokens = {n: 0 for n in self.sources}
        for mixture, steps in phases[:phase]:
            plan = self.plan(mixture)
            for n, rows in zip(plan.names, plan.cumulative(steps)):
                tokens[n] += rows * self.cfg.seq_len
        return tokens

    def consumption(self, mixture: Mapping[str, float], phase: int = 0, step: int = 0, *,
                    start_tokens: Mapping[str, int] | None = None) -> dict[str, dict[str, float]]:
        """{source: {tokens, epochs}} consumed once batches 0..step-1 of a phase are trained on
        (start_tokens as for train_iterator): a pure function of the plan, cheap for any step."""
        return consumption(self._cursor(mixture, phase, 0, start_tokens), step)

    def _cursor(self, mixture: Mapping[str, float], phase: int, start_step: int,
                start_tokens: Mapping[str, int] | None) -> _Cursor:
        plan = self.plan(mixture)
        starts = {n: _start(int(t), self.cfg.seq_len) for n, t in _phase_start(phase, start_tokens).items()}
        origin = {n: o for n, (o, _) in starts.items()}
        base = _Cursor(self._streams, plan, self.cfg.seq_len, 0, origin, {n: r for n, (_, r) in starts.items()},
                       self._source_index())
        return _Cursor(self._streams, plan, self.cfg.seq_len, start_step, origin, base.rows_before(start_step),
                       self._source_index())

    def _source_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.source_names)}

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
        cursor = self._cursor(mixture, phase, start_step, start_tokens)
        lo, hi = self._row_range(process_index, process_count, row_range)
        return TrainIterator(cursor, self.cfg, phase, lo, hi, num_steps, mixture)

    def resume(self, state: Mapping, process_index: int = 0, process_count: int = 1, *,
               mixture: Mapping[str, float] | None = None, row_range: tuple[int, int] | None = None,
               num_steps: int | None = None, skip: int = 0) -> TrainIterator:
        """Continue from `TrainIterator.state()`. With the same config the batches are those the
        first run would have produced; with a new mixture or batch size every source continues
        where it stopped; with a new seq_len, at the end of the block it was reading.
        skip: start `skip` batches later (where a phase that began at `state` stands after that
        many steps; arithmetic, nothing is read)."""
        if state.get("version") not in (1, STATE_VERSION):
            raise DataError(f"data iterator state has version {state.get('version')}, expected {STATE_VERSION}")
        if state["seed"] != self.cfg.seed:
            raise DataError(f"data.seed is {self.cfg.seed} but the checkpoint's data stream used seed "
                            f"{state['seed']}; set data.seed back to resume the same stream")
        mixture = dict(state["mixture"]) if mixture is None else mixture
        seq, old_seq = self.cfg.seq_len, int(state["seq_len"])
        origin, rows = {}, {}
        for n, tokens in state["tokens"].items():
            o = int(state.get("origin", {}).get(n, 0))
            r = (int(tokens) - o) // old_seq
            if old_seq != seq:  # another row size: a fresh block grid after the block being read
                width = block_rows(self._streams[n].epoch_tokens, old_seq) if n in self._streams else 1
                o, r = o + -(-r // width) * width * old_seq, 0
            origin[n], rows[n] = o, r
        cursor = _Cursor(self._streams, self.plan(mixture), seq, int(state["step"]), origin, rows,
                         self._source_index())
        if skip:
            at = cursor.base_step + skip
            cursor = _Cursor(self._streams, cursor.plan, seq, at, origin, cursor.rows_before(at), self._source_index())
        lo, hi = self._row_range(process_index, process_count, row_range)
        return TrainIterator(cursor, self.cfg, int(state["phase"]), lo, hi, num_steps, mixture)

    def global_batch(self, mixture: Mapping[str, float], phase: int = 0, step: int = 0, *,
                     start_tokens: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """The whole global batch `step` of a phase, without grain (tests, debugging)."""
        return self._cursor(mixture, phase, 0, start_tokens).rows(step, 0, self.cfg.global_batch_size)

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
                index = np.full((bs, seq), self._source_index()[source], np.int32)
                batches.append({**{k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS[:3]}, "source_ids": index})
            self._eval_cache[key] = batches
        return self._eval_cache[key]


def _phase_start(phase: int, start_tokens: Mapping[str, int] | None) -> Mapping[str, int]:
    if start_tokens is None:
        if phase > 0:
            raise DataError(f"phase {phase} needs start_tokens (where earlier phases left each source): pass "
                            "pipe.phase_start_tokens([(mixture, steps), ...], phase), or {} to restart every stream")
        return {}
    return start_tokens
