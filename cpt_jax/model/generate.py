"""Sampling a short continuation, for demos and smoke checks (no KV cache: recomputes the
prefix each token, which is fine for the tiny models it serves and keeps one compiled shape)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sample(graphdef, params, prompt: list[int], max_new_tokens: int, *, length: int,
           temperature: float = 0.8, top_k: int = 40, seed: int = 0, eos_id: int | None = None) -> list[int]:
    """Continue `prompt` inside a fixed window of `length` tokens; returns the new token ids."""
    if len(prompt) >= length:
        prompt = prompt[-(length - 1):]

    @jax.jit
    def next_token(params, tokens, cur, key):
        logits = nnx.merge(graphdef, params)(tokens)[0, cur - 1]
        if temperature <= 0:
            return jnp.argmax(logits)
        top = jax.lax.top_k(logits, top_k)
        choice = jax.random.categorical(key, top[0] / temperature)
        return top[1][choice]

    tokens = np.zeros((1, length), np.int32)
    tokens[0, :len(prompt)] = prompt
    cur, out, key = len(prompt), [], jax.random.key(seed)
    for _ in range(max_new_tokens):
        if cur >= length:  # slide the window
            tokens[0, :-1] = tokens[0, 1:]
            cur = length - 1
        key, sub = jax.random.split(key)
        tok = int(next_token(params, jnp.asarray(tokens), cur, sub))
        tokens[0, cur] = tok
        cur += 1
        out.append(tok)
        if eos_id is not None and tok == eos_id:
            break
    return out
