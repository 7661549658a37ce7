"""Held-out loss and perplexity of a set of parameters on every source's eval split."""

from __future__ import annotations

import math
from typing import Any, Callable

from cpt_jax.data import DataPipeline


def heldout_losses(eval_step: Callable, params: Any, pipe: DataPipeline, num_batches: int, batch_size: int,
                   to_device: Callable[[dict], dict]) -> dict[str, dict[str, float]]:
    """{source: {loss, ppl, tokens}}; sums over batches, so the mean weights every token equally."""
    out = {}
    for source in sorted(pipe.eval_sources()):
        nll, tokens = 0.0, 0.0
        for batch in pipe.eval_batches(source, num_batches, batch_size):
            sums = eval_step(params, to_device(batch))
            nll += float(sums["nll_sum"])
            tokens += float(sums["tokens"])
        loss = nll / max(tokens, 1.0)
        out[source] = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": tokens}
    return out
