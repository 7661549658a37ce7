"""Log-likelihood requests and their rows.

A request is (context ids, continuation ids): the model is scored on the continuation only.
Ids are made as lm-evaluation-harness's HF model class makes them: trailing spaces of the context
move to the continuation, the whole string is encoded and split at the length of the encoded
context, and an empty context becomes the prefix token. Every request fills one row of a [B, L]
batch (right padding, segment 0), truncated from the left as lm-eval truncates at its max length,
so one compiled function scores every task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from cpt_jax.tasks.tokenizer import TaskTokenizer


@dataclass(frozen=True)
class Request:
    context: tuple[int, ...]
    continuation: tuple[int, ...]


def encode_pair(tok: TaskTokenizer, context: str, continuation: str) -> Request:
    if context == "":
        cont = tok.encode(continuation, add_special_tokens=False)
        if cont and cont[0] == tok.prefix_id:
            return Request((cont[0],), tuple(cont[1:]))
        return Request((tok.prefix_id,), tuple(cont))
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return Request(tuple(ctx), tuple(whole[len(ctx):]))


def rolling_requests(tokens: list[int], prefix_id: int, max_len: int) -> list[Request]:
    """Disjoint windows that score every token of a text once, each with as much preceding context
    as fits in `max_len` (lm-eval's loglikelihood_rolling with context_len 1)."""
    out, done = [], 0
    while done < len(tokens):
        if done == 0:
            n = min(max_len, len(tokens))
            out.append(Request((prefix_id,), tuple(tokens[:n])))
        else:
            n = min(len(tokens) - done, max_len)
            end = done + n
            window = tokens[max(end - max_len - 1, 0):end - 1]
            out.append(Request(tuple(window[:len(window) - (n - 1)]), tuple(tokens[done:end])))
        done += n
    return out


def request_row(req: Request, seq_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(inputs, targets, n scored) of one request in a row of `seq_len`: the last seq_len + 1 ids
    of context + continuation, inputs without the last id and targets shifted by one; the
    continuation's tokens are the last `n` targets."""
    ids = (req.context + req.continuation)[-(seq_len + 1):]
    n = min(len(req.continuation), len(ids) - 1)
    return np.asarray(ids[:-1], np.int32), np.asarray(ids[1:], np.int32), n


MIN_ROW = 16  # the shortest row length (bucket) a batch gets


def row_length(longest: int, max_len: int) -> int:
    """The bucket of a batch whose longest request has `longest` inputs: the next power of two,
    at least MIN_ROW, at most max_len."""
    return min(max(MIN_ROW, 1 << max(longest - 1, 0).bit_length()), max_len)


def pack_rows(requests: list[Request], batch_size: int, max_len: int) -> Iterator[tuple[dict[str, np.ndarray], list[int]]]:
    """Batches {tokens, positions, segment_ids, targets, score_mask} of [batch_size, row_length]
    and the index of the request in each row (a last batch has fewer: its other rows are empty).
    Requests go longest first (as lm-eval orders them), so each batch holds similar lengths."""
    rows = [request_row(req, max_len) for req in requests]
    order = sorted(range(len(requests)), key=lambda i: -len(rows[i][0]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        length = row_length(len(rows[idx[0]][0]), max_len)
        batch = {k: np.zeros((batch_size, length), np.int32)
                 for k in ("tokens", "positions", "segment_ids", "targets", "score_mask")}
        for r, i in enumerate(idx):
            inputs, targets, n = rows[i]
            m = len(inputs)
            batch["tokens"][r, :m] = inputs
            batch["targets"][r, :m] = targets
            batch["positions"][r, :m] = np.arange(m)
            batch["segment_ids"][r, :m] = 1
            batch["score_mask"][r, m - n:m] = 1
        yield batch, idx
