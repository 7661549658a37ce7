"""Downstream-task building blocks: task files, k-shot prompts, lm-eval's request rules, fixed-shape
rows, metric math, the eval cadence, and the metrics rows the loop writes."""

import json
import math
import random

import numpy as np
import pytest

from cpt_jax.config.base import from_dict
from cpt_jax.errors import ConfigError, DataError
from cpt_jax.tasks import (ChoiceDoc, Request, TaskConfig, encode_pair, load_docs, load_task_tokenizer, pack_rows,
                           parse_task_spec, prepare_task, rolling_requests)
from cpt_jax.tasks.prompts import contexts, draw_shots
from cpt_jax.tasks.scoring import choice_scores, multiple_choice_metrics, perplexity_metrics
from cpt_jax.train.config import EvalConfig


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def tok(tmp_path):
    """A word-level tokenizer.json whose post-processor prepends <s> (as Llama's does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 50)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.add_special_tokens(["<s>", "</s>"])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    t.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return load_task_tokenizer(tmp_path)


# ------------------------------------------------------------------ config and files
@pytest.mark.parametrize("row, key", [
    ({"name": "a b", "path": "x.jsonl"}, "name"),
    ({"name": "a", "path": "x.jsonl", "shots": 2}, "fewshot_path"),
    ({"name": "a", "path": "x.jsonl", "shots": 2, "fewshot_path": "x.jsonl"}, "fewshot_path"),
    ({"name": "a", "path": "x.jsonl", "kind": "loglikelihood", "shots": 1, "fewshot_path": "y"}, "shots"),
    ({"name": "a", "path": "x.jsonl", "kind": "cloze"}, "kind"),
    ({"name": "a", "path": "x.jsonl", "limit": -1}, "limit"),
])
def test_task_config_rejects(row, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(TaskConfig, row)


def test_task_spec_parsing():
    t = parse_task_spec("mc=data/q.jsonl", shots=3, fewshot={"mc": "data/train.jsonl"})
    assert (t.name, t.path, t.kind, t.shots, t.fewshot_path) == ("mc", "data/q.jsonl", "multiple_choice", 3,
                                                                  "data/train.jsonl")
    assert parse_task_spec("ppl=t.jsonl:loglikelihood", shots=3).kind == "loglikelihood"
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_task_spec("nopath")


@pytest.mark.parametrize("row, words", [
    ('{"choices": ["a", "b"], "gold": 0}', "missing 'context'"),
    ('{"context": "q", "gold": 0}', "missing 'choices'"),
    ('{"context": "q", "choices": ["a", "b"]}', "missing 'gold'"),
    ('{"context": "q", "choices": ["a", "b"], "gold": 2}', "0..1"),
    ('{"context": "q", "choices": ["a", "b"], "gold": true}', "gold"),
    ('{"context": "q", "choices": ["a"], "gold": 0}', "at least two"),
    ('{"context": "q", "choices": ["a", "b"], "gold": 0', "not valid JSON"),
    ('["q"]', "JSON object"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, words):
    path = _jsonl(tmp_path / "t.jsonl", [{"context": "ok", "choices": ["a", "b"], "gold": 1}, row])
    with pytest.raises(DataError, match=rf"t\.jsonl:2: .*{words}"):
        load_docs(path, "multiple_choice")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_docs(tmp_path / "none.jsonl", "multiple_choice")
    with pytest.raises(DataError, match="no documents"):
        load_docs(_jsonl(tmp_path / "e.jsonl", [""]), "multiple_choice")
    with pytest.raises(DataError, match='"text"'):
        load_docs(_jsonl(tmp_path / "t.jsonl", [{"context": "x"}]), "loglikelihood")


def test_limit_keeps_the_first_documents(tmp_path):
    rows = [{"context": f"q{i}", "choices": ["a", "b"], "gold": i % 2} for i in range(5)]
    docs = load_docs(_jsonl(tmp_path / "t.jsonl", rows), "multiple_choice", limit=3)
    assert [d.context for d in docs] == ["q0", "q1", "q2"]


# ------------------------------------------------------------------ k-shot prompts
def test_shots_are_drawn_as_lm_eval_draws_them():
    """lm-eval: one random.Random(seed) per task, rnd.sample(pool, k) per document in order."""
    pool = [f"doc{i}" for i in range(9)]
    rnd = random.Random(1234)
    expected = [[pool.index(d) for d in rnd.sample(pool, 3)] for _ in range(5)]
    assert draw_shots(5, 9, 3, 1234) == expected
    assert draw_shots(5, 9, 3, 1234) != draw_shots(5, 9, 3, 1)
    with pytest.raises(DataError, match="at least 4"):
        draw_shots(1, 3, 4, 0)


def test_kshot_prompt_layout():
    pool = [ChoiceDoc("Q1", ("a", "b"), 1), ChoiceDoc("Q2", ("c", "d"), 0)]
    doc = ChoiceDoc("Q3", ("e", "f"), 0)
    [prompt] = contexts([doc], pool, 2, seed=0)
    first, second = draw_shots(1, 2, 2, 0)[0]
    shot = {0: "Q1 b\n\n", 1: "Q2 c\n\n"}
    assert prompt == shot[first] + shot[second] + "Q3"
    assert contexts([doc], [], 0, seed=0) == ["Q3"]


# ------------------------------------------------------------------ requests
def test_encode_pair_follows_lm_eval(tok):
    # Whole string encoded, split at the encoded context's length; BOS only at the start.
    assert encode_pair(tok, "w3 w4", " w5 w6") == Request((1, 3, 4), (5, 6))
    # Trailing spaces move to the continuation.
    assert encode_pair(tok, "w3 w4 ", "w5") == Request((1, 3, 4), (5,))
    # Text already starting with the BOS text: no second BOS.
    assert encode_pair(tok, "<s> w3", " w5") == Request((1, 3), (5,))
    # Empty context: the prefix token (BOS) conditions the continuation.
    assert encode_pair(tok, "", "w7 w8") == Request((1,), (7, 8))


def test_rolling_windows_score_every_token_once():
    tokens = list(range(10, 33))  # 23 tokens
    for max_len in (4, 8, 23, 64):
        windows = rolling_requests(tokens, prefix_id=1, max_len=max_len)
        assert [t for w in windows for t in w.continuation] == tokens
        assert windows[0].context == (1,)
        for w in windows:
            assert len(w.context) + len(w.continuation) <= max_len + 1
            assert len(w.context) >= 1
        for w in windows[1:]:  # each later window conditions on the tokens right before it
            first = tokens.index(w.continuation[0])
            assert w.context == tuple(tokens[first - len(w.context):first])


def test_rows_are_left_truncated_and_bucketed():
    reqs = [Request((1, 2, 3), (4, 5)), Request((1,), (6,)), Request(tuple(range(1, 20)), (30, 31))]
    batches = list(pack_rows(reqs, batch_size=2, max_len=8))
    assert [idx for _, idx in batches] == [[2, 0], [1]]  # longest first
    b0, b1 = batches[0][0], batches[1][0]
    assert all(v.shape == (2, 8) for b in (b0, b1) for v in b.values())  # MIN_ROW capped at max_len
    # 21 ids > max_len + 1: the last 9 are kept, as lm-eval keeps (ctx + cont)[-(max_len + 1):].
    np.testing.assert_array_equal(b0["tokens"][0], [13, 14, 15, 16, 17, 18, 19, 30])
    np.testing.assert_array_equal(b0["targets"][0], [14, 15, 16, 17, 18, 19, 30, 31])
    np.testing.assert_array_equal(b0["score_mask"][0], [0, 0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(b0["tokens"][1], [1, 2, 3, 4, 0, 0, 0, 0])
    np.testing.assert_array_equal(b0["targets"][1], [2, 3, 4, 5, 0, 0, 0, 0])
    np.testing.assert_array_equal(b0["score_mask"][1], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(b1["segment_ids"][0], [1, 0, 0, 0, 0, 0, 0, 0])
    assert not b1["segment_ids"][1].any()  # the padding row scores nothing


def test_rows_are_as_long_as_the_batch_needs_not_the_context():
    """A context of 131072: short requests get rows of a power of two >= MIN_ROW, per batch."""
    reqs = [Request((1,) * n, (2,)) for n in (3, 40, 20, 100, 5, 70)]
    shapes = [(b["tokens"].shape, idx) for b, idx in pack_rows(reqs, batch_size=2, max_len=131072)]
    assert shapes == [((2, 128), [3, 5]), ((2, 64), [1, 2]), ((2, 16), [4, 0])]
    assert [b["tokens"].shape[1] for b, _ in pack_rows(reqs, 8, 50)] == [50]  # capped at the context


def test_prepared_task_requests(tmp_path, tok):
    rows = [{"context": "w3 w4", "choices": ["w5", "w6 w7"], "gold": 1}]
    task = prepare_task(TaskConfig("t", str(_jsonl(tmp_path / "t.jsonl", rows))), tok, seq_len=16)
    assert task.requests == [Request((1, 3, 4), (5,)), Request((1, 3, 4), (6, 7))]
    assert task.owner == [0, 0]
    with pytest.raises(ValueError, match="2 requests"):
        task.metrics([0.0])


# ------------------------------------------------------------------ scoring
def test_acc_norm_divides_by_characters():
    doc = ChoiceDoc("q", ("w1", "w10 w11 w12"), 1)
    # Summed: the short choice wins; per character (2 vs 11): the long one does.
    assert choice_scores([-4.0, -10.0], doc) == {"acc": 0.0, "acc_norm": 1.0, "acc_bytes": 1.0}
    # Characters, not bytes: "é" is 1 character but 2 bytes.
    doc = ChoiceDoc("q", ("éé", "abc"), 0)
    scores = choice_scores([-2.1, -3.0], doc)  # per char -1.05 vs -1.0; per byte -0.525 vs -1.0
    assert (scores["acc_norm"], scores["acc_bytes"]) == (0.0, 1.0)
    m = multiple_choice_metrics([{"acc": 1.0, "acc_norm": 0.0, "acc_bytes": 0.0},
                                 {"acc": 0.0, "acc_norm": 0.0, "acc_bytes": 1.0}])
    assert (m["acc"], m["acc_norm"], m["n"]) == (0.5, 0.0, 2.0)


def test_perplexity_metrics():
    from cpt_jax.tasks import TextDoc
    docs = [TextDoc("a bb"), TextDoc("ccc")]
    m = perplexity_metrics(docs, [-3.0, -5.0], [2, 2])
    assert m["word_perplexity"] == pytest.approx(math.exp(8 / 3))
    assert m["byte_perplexity"] == pytest.approx(math.exp(8 / 7))
    assert m["bits_per_byte"] == pytest.approx(8 / 7 / math.log(2))
    assert m["token_perplexity"] == pytest.approx(math.exp(2.0))


# ------------------------------------------------------------------ eval cadence and rows
def test_eval_due_cadence():
    e = EvalConfig(every=50, dense_first=20, dense_every=5)
    due = [s for s in range(0, 101) if e.due(s, 1000 + s)]  # phase starts at global step 1000
    assert due == [0, 5, 10, 15, 20, 50, 100]
    plain = EvalConfig(every=50)
    assert [s for s in range(0, 101) if plain.due(s, 30 + s)] == [0, 20, 70]


@pytest.mark.parametrize("row, key", [({"dense_first": 10}, "dense_every"), ({"dense_every": -1}, "dense_every"),
                                      ({"tasks": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}, "tasks")])
def test_eval_config_rejects(row, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(EvalConfig, row, "eval")


def test_eval_config_reads_tasks():
    e = from_dict(EvalConfig, {"tasks": [{"name": "mc", "path": "q.jsonl", "shots": 5, "fewshot_path": "t.jsonl"}]})
    assert e.tasks[0] == TaskConfig("mc", "q.jsonl", shots=5, fewshot_path="t.jsonl")


def test_task_rows_format():
    from cpt_jax.train.task_eval import task_rows
    from cpt_jax.train.metrics import scalar_tags

    rows = task_rows({"mc": {"acc": 0.5, "acc_norm": 0.25, "n": 4.0}}, step=7, phase=1, phase_name="cpt")
    assert rows == [{"kind": "task", "step": 7, "phase": 1, "phase_name": "cpt", "task": "mc", "acc": 0.5,
                     "acc_norm": 0.25, "n": 4.0}]
    assert scalar_tags(rows[0]) == {"task/mc/acc": 0.5, "task/mc/acc_norm": 0.25, "task/mc/n": 4.0}


def test_shipped_example_tasks_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "configs" / "tasks"
    assert len(load_docs(folder / "example_mc.jsonl", "multiple_choice")) == 12
    assert len(load_docs(folder / "example_mc_fewshot.jsonl", "multiple_choice")) == 6
    assert len(load_docs(folder / "example_text.jsonl", "loglikelihood")) == 3


def test_sentencepiece_and_its_hf_export_build_the_same_requests(tmp_path):
    """In the loop a run may tokenise with its sentencepiece .model; `cpt-jax eval --model` reads the
    exported tokenizer.json. Both must give the same requests, so the scores agree."""
    from cpt_jax.data.tokenizer import train_sentencepiece
    from cpt_jax.hf.spm_tokenizer import spm_to_hf_tokenizer
    from text_fixtures import documents, vocabulary

    model = tmp_path / "tok.model"
    train_sentencepiece(documents(vocabulary("a", 40), 200, seed=3), model, 120)
    hf = tmp_path / "hf"
    hf.mkdir()
    spm_to_hf_tokenizer(model, hf, max_length=64)
    spm_tok, hf_tok = load_task_tokenizer(model), load_task_tokenizer(hf)
    assert spm_tok.prefix_id == hf_tok.prefix_id == 1  # BOS
    rows = [{"context": "aaa aab aac", "choices": ["aad", "aae aaf", "zz top"], "gold": 0},
            {"context": "aba abb ", "choices": ["abc", "abd"], "gold": 1}]
    path = _jsonl(tmp_path / "t.jsonl", rows)
    a = prepare_task(TaskConfig("t", str(path)), spm_tok, seq_len=32)
    b = prepare_task(TaskConfig("t", str(path)), hf_tok, seq_len=32)
    assert a.requests == b.requests and all(r.continuation for r in a.requests)
