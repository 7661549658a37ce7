"""Packing: rows of seq_len tokens cut from a source's endless, epoch-shuffled token stream.

The stream of a source is epoch 0, epoch 1, ... back to back; epoch e is every document once,
in an order shuffled with a key derived from (seed, source, epoch), each ending with EOS. Token
offset t lies in epoch t // T (T: tokens per epoch); prefix sums of the shuffled lengths and a
binary search find the document, so any slice of the stream is materialised directly, with no
state: the pipeline is a pure function of the offsets it asks for. Only the tokens of the slice are
read (`Documents.read`), so a row costs O(row) however long its documents are. Nothing is dropped; a document
cut by a row boundary continues in the next row of the same source.

Each piece of a document in a row gets its own segment id (1, 2, ...), so attention never crosses
documents, and positions restarting at 0 per piece. With rotary embeddings only distances inside a
segment matter, so restarting loses nothing and keeps positions below seq_len.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from cpt_jax.errors import DataError
from cpt_jax.data.hashing import derive_key, permutation
from cpt_jax.data.sources import Documents


class PackedStream:
    """Token stream of one split. key=None: documents in stored order, one pass, then padding."""

    _CACHED_EPOCHS = 2  # a row may straddle two epochs; older layouts are rebuilt on demand

    def __init__(self, docs: Documents, key: int | None):
        self.docs = docs
        self.key = key
        self.epoch_tokens = int(np.sum(docs.lengths))
        self._layouts: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):  # picklable for grain worker processes: drop the lock and the cache
        return {"docs": self.docs, "key": self.key, "epoch_tokens": self.epoch_tokens}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._layouts, self._lock = OrderedDict(), threading.Lock()

    def layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(document order, end offset of each document in that order) for one epoch."""
        with self._lock:
            if epoch in self._layouts:
                self._layouts.move_to_end(epoch)
                return self._layouts[epoch]
        n = len(self.docs.lengths)
        order = np.arange(n) if self.key is None else permutation(n, derive_key(self.key, epoch))
        ends = np.cumsum(self.docs.lengths[order])
        with self._lock:
            self._layouts[epoch] = (order, ends)
            while len(self._layouts) > self._CACHED_EPOCHS:
                self._layouts.popitem(last=False)
        return order, ends

    def epoch_of(self, token: int) -> int:
        return token // self.epoch_tokens

    def read(self, start: int, n: int) -> dict[str, np.ndarray]:
        """Tokens [start, start + n) of the stream with segment ids and positions."""
        if self.epoch_tokens == 0:
            raise DataError("this split has no tokens")
        tokens = np.zeros(n, np.int32)
        segments = np.zeros(n, np.int32)
        positions = np.zeros(n, np.int32)
        filled, t, segment = 0, start, 0
        while filled < n:
            epoch, offset = divmod(t, self.epoch_tokens)
            if self.key is None and epoch > 0:
                break  # one pass only: the rest of the row stays padding (segment 0)
            order, ends = self.layout(epoch)
            p = int(np.searchsorted(ends, offset, side="right"))
            doc = int(order[p])
            size = int(self.docs.lengths[doc])
            k = offset - (int(ends[p]) - size)
            take = min(size - k, n - filled)
            segment += 1
            tokens[filled:filled + take] = self.docs.read(doc, k, k + take)  # only the tokens needed
            segments[filled:filled + take] = segment
            positions[filled:filled + take] = np.arange(take, dtype=np.int32)
            filled += take
            t += take
        return {"tokens": tokens, "segment_ids": segments, "positions": positions}

