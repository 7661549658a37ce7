"""cpt_jax scores downstream tasks as lm-evaluation-harness 0.4.13 does (`multiple_choice` with the
default target delimiter and normalisation, k-shot drawn with its seed, `loglikelihood_rolling`):
per-item log-likelihoods to 1e-4, accuracies and perplexities exactly, on the same tiny HF Llama."""

import random

import numpy as np
import pytest

from hf_fixtures import make_tiny_hf_model
from lm_eval_fixtures import MC_YAML, ROLLING_YAML, run_lm_eval, their_items, write_jsonl

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is a test extra: pip install -e '.[test]'")

VOCAB = 160


def _words(rng, lo, hi):
    return " ".join(f"w{rng.randrange(3, VOCAB)}" for _ in range(rng.randrange(lo, hi)))


def _mc_doc(rng):
    n = rng.randrange(2, 5)
    # Choices of 1 to 4 words: their character lengths differ, so acc_norm is not acc.
    return {"context": _words(rng, 3, 9), "choices": [_words(rng, 1, 5) for _ in range(n)], "gold": rng.randrange(n)}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(lm-eval's results and samples, cpt_jax's results) for three tasks on one HF folder."""
    tmp = tmp_path_factory.mktemp("lm_eval")
    hf_dir = make_tiny_hf_model(tmp / "hf", "llama", vocab_size=VOCAB)  # max_position_embeddings 128
    rng = random.Random(0)
    test = write_jsonl(tmp / "test.jsonl", [_mc_doc(rng) for _ in range(16)])
    train = write_jsonl(tmp / "train.jsonl", [_mc_doc(rng) for _ in range(8)])
    # Texts longer than the 128-token context: scored in several rolling windows.
    texts = write_jsonl(tmp / "texts.jsonl", [{"text": _words(rng, 20, 200)} for _ in range(3)])
    yamls = {name: MC_YAML.format(name=name, test=test, train=train, shots=shots)
             for name, shots in (("tinymc0", 0), ("tinymc2", 2))}
    theirs = run_lm_eval(hf_dir, {**yamls, "tinyroll": ROLLING_YAML.format(name="tinyroll", test=texts)}, tmp)

    from cpt_jax.eval import evaluate
    from cpt_jax.tasks import TaskConfig

    ours = evaluate(model_dir=str(hf_dir), details=True, tasks=[
        TaskConfig(name="tinymc0", path=str(test)),
        TaskConfig(name="tinymc2", path=str(test), shots=2, fewshot_path=str(train)),
        TaskConfig(name="tinyroll", path=str(texts), kind="loglikelihood")])
    return theirs, ours


@pytest.mark.parametrize("task", ["tinymc0", "tinymc2"])
def test_multiple_choice_matches_lm_eval(both, task):
    theirs, ours = both
    samples, their_lls = their_items(theirs, task)
    our_lls = ours["task_details"][task]
    assert [len(x) for x in our_lls] == [len(x) for x in their_lls]
    np.testing.assert_allclose(np.concatenate(our_lls), np.concatenate(their_lls), atol=1e-4, rtol=0)
    # Same per-document decisions, hence the same accuracies, exactly.
    for key in ("acc", "acc_norm"):
        assert ours["tasks"][task][key] == pytest.approx(theirs["results"][task][f"{key},none"], abs=1e-12)
        assert ours["tasks"][task][key] == np.mean([s[key] for s in samples])
    assert ours["tasks"][task]["n"] == len(samples) == 16


def test_acc_norm_decides_differently_somewhere(both):
    """The set is built so length normalisation changes at least one prediction (else acc_norm
    parity would not test the normalisation)."""
    theirs, _ = both
    samples, lls = their_items(theirs, "tinymc0")
    changed = [np.argmax(ll) != np.argmax(np.asarray(ll) / [len(c) for c in s["doc"]["choices"]])
               for s, ll in zip(samples, lls)]
    assert any(changed)


def test_kshot_prompts_match_lm_eval(both):
    theirs, _ = both
    samples, _ = their_items(theirs, "tinymc2")
    assert all(s["arguments"][0][0].count("\n\n") == 2 for s in samples)  # the k-shot path was exercised


def test_rolling_perplexity_matches_lm_eval(both):
    theirs, ours = both
    _, their_lls = their_items(theirs, "tinyroll")
    our_docs = [sum(windows) for windows in ours["task_details"]["tinyroll"]]
    assert max(len(w) for w in ours["task_details"]["tinyroll"]) > 1  # several windows were needed
    np.testing.assert_allclose(our_docs, [x[0] for x in their_lls], atol=1e-3, rtol=1e-6)
    for key in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours["tasks"]["tinyroll"][key] == pytest.approx(theirs["results"]["tinyroll"][f"{key},none"], rel=1e-6)
