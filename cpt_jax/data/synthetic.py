"""Synthetic documents for smoke runs and train-loop tests: no files, learnable structure.

Each document is a run of patterns drawn from a small bank (fixed by the seed) of short token
sequences with distinct tokens, ended by EOS (id 0). Inside a pattern the next token is fully
determined by the current one, so even a tiny model's loss falls fast from log(vocab) towards
log(num_patterns) / pattern_len. Document i is a pure function of (seed, split, i).
"""

from __future__ import annotations

import numpy as np

from cpt_jax.data.hashing import derive_key, permutation, random_u64

EOS_ID = 0
_SLOT_BITS = 24  # document index and slot share one counter: index << 24 | slot


class SyntheticDocs:
    """Random access to one split of a synthetic source (`__getitem__` -> int32 tokens)."""

    def __init__(self, vocab_size: int, num_docs: int, min_len: int, max_len: int, seed: int, split: str):
        self.vocab_size = vocab_size
        self._key = derive_key("synthetic", seed, split)
        self.bank = pattern_bank(vocab_size, seed)
        span = np.uint64(max_len - min_len + 1)
        self.lengths = (min_len + random_u64(self._key, np.arange(num_docs)) % span).astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read(i, 0, int(self.lengths[i]))

    def read(self, i: int, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of document i; only their patterns are generated."""
        n = int(self.lengths[i])
        pat_len = self.bank.shape[1]
        index = np.arange(start, stop)
        body = index < n - 1
        counters = (np.uint64(i) << np.uint64(_SLOT_BITS)) | (index[body] // pat_len).astype(np.uint64)
        choice = random_u64(self._key ^ 0x5EED, counters) % np.uint64(len(self.bank))
        out = np.full(stop - start, EOS_ID, np.int32)
        out[body] = self.bank[choice.astype(np.int64), index[body] % pat_len]
        return out


def pattern_bank(vocab_size: int, seed: int, num_patterns: int = 16, pattern_len: int = 8) -> np.ndarray:
    """[patterns, pattern_len] token ids in 1..vocab-1, distinct where the vocabulary allows."""
    pattern_len = min(pattern_len, vocab_size - 1)
    num_patterns = max(2, min(num_patterns, (vocab_size - 1) // pattern_len))
    need = num_patterns * pattern_len
    perm = permutation(vocab_size - 1, derive_key("synthetic-bank", seed)) + 1
    return np.resize(perm, need).reshape(num_patterns, pattern_len).astype(np.int32)
