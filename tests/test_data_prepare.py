"""`prepare`: shards and manifest, skipped records, held-out split, resumable reruns, bad input."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from cpt_jax.data import prepare as prep
from text_fixtures import documents, vocabulary, word_level_tokenizer, write_jsonl
from cpt_jax.errors import DataError
from cpt_jax.data.hashing import sha256_file
from cpt_jax.data.manifest import open_prepared
from cpt_jax.data.readers import ReadOptions
from cpt_jax.data.sources import PreparedDocs

WORDS = vocabulary("w", 50)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    texts = documents(WORDS, 90, seed=1)
    write_jsonl(root / "in" / "a.jsonl", texts[:60])
    with open(root / "in" / "a.jsonl", "ab") as f:  # four bad records and a blank line (not a record)
        f.write(b'{"body": "no text field"}\n\nnot json\n{"text": ""}\n{"text": "bad \xff utf8"}\n')
    (root / "in" / "b.txt").write_text("\n\n".join(texts[60:70]) + "\n")
    (root / "in" / "empty.txt").write_text("")
    pq.write_table(pa.table({"content": texts[70:90], "n": list(range(20))}), root / "in" / "c.parquet",
                   row_group_size=7)
    return {"root": root, "texts": texts}


def options(corpus, out, **kw):
    base = dict(inputs=(str(corpus["root"] / "in"),), out=str(out), train_tokenizer=120, eval_docs=6,
                shard_docs=16, read=ReadOptions(column="content", txt_split="blank-lines"), progress=False)
    return prep.PrepareOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return out, prep.prepare(options(corpus, out))


def read_split(out, split):
    p = open_prepared(out)
    docs = PreparedDocs(p.splits[split].shards, p.splits[split].lengths, p.dtype, p.chunk_tokens)
    return [docs[i] for i in range(len(p.splits[split].lengths))]


def test_manifest_counts_documents_tokens_and_skips(corpus, prepared):
    out, m = prepared
    assert m["splits"]["train"]["documents"] + m["splits"]["eval"]["documents"] == 90
    assert m["splits"]["eval"]["documents"] == 6
    assert m["skipped"]["count"] == 5
    assert m["skipped"]["by_reason"] == {"missing field 'text'": 1, "invalid JSON (Expecting value)": 1,
                                         "empty document": 2, "invalid UTF-8": 1}
    bad = [s for s in m["skipped"]["records"] if s["reason"].startswith("invalid UTF-8")]
    assert bad[0]["file"].endswith("a.jsonl") and bad[0]["record"] == 63
    assert m["tokenizer"]["sha256"] == sha256_file(out / "tokenizer.model")
    assert m["tokenizer"]["vocab_size"] <= 120 and m["tokenizer"]["trained_here"]
    shas = {Path(s["path"]).name: s["sha256"] for s in m["sources"]}
    assert shas["c.parquet"] == sha256_file(corpus["root"] / "in" / "c.parquet")
    assert {Path(s["path"]).name: s["train_documents"] + s["eval_documents"] for s in m["sources"]} == \
        {"a.jsonl": 60, "b.txt": 10, "c.parquet": 20, "empty.txt": 0}


def test_documents_round_trip_and_end_with_eos(corpus, prepared):
    out, m = prepared
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    eos = m["tokenizer"]["eos_id"]
    train, held = read_split(out, "train"), read_split(out, "eval")
    assert sum(d.size for d in train) == m["splits"]["train"]["tokens"]
    assert max(int(d.max()) for d in train + held) == m["max_token_id"] < m["tokenizer"]["vocab_size"]
    decoded = []
    for doc in train + held:
        assert doc[-1] == eos and eos not in doc[:-1]
        decoded.append(sp.decode(doc[:-1].tolist()))
    assert sorted(decoded) == sorted(corpus["texts"])


def test_held_out_is_chosen_by_content(tmp_path):
    words = vocabulary("d", 20)
    texts = documents(words, 40, seed=5) * 3  # every document three times, in several files
    tok = word_level_tokenizer(tmp_path / "tok.json", words)
    for i in range(3):
        write_jsonl(tmp_path / "in" / f"{i}.jsonl", texts[i * 40:(i + 1) * 40])
    prep.prepare(prep.PrepareOptions(inputs=(str(tmp_path / "in"),), out=str(tmp_path / "o"), tokenizer=str(tok),
                                     eval_docs=4, shard_docs=7, progress=False))
    train = {tuple(d.tolist()) for d in read_split(tmp_path / "o", "train")}
    held = [tuple(d.tolist()) for d in read_split(tmp_path / "o", "eval")]
    assert len(held) == 12 and len(set(held)) == 4  # all copies of 4 distinct documents
    assert not train.intersection(held)


def test_parallel_workers_give_the_same_shards(corpus, prepared, tmp_path):
    out, m = prepared
    m2 = prep.prepare(options(corpus, tmp_path, workers=2))
    assert m2["splits"] == m["splits"] and m2["tokenizer"]["sha256"] == m["tokenizer"]["sha256"]
    for split in ("train", "eval"):
        for a, b in zip(read_split(out, split), read_split(tmp_path, split), strict=True):
            np.testing.assert_array_equal(a, b)


def test_rerun_redoes_only_unfinished_shards(corpus, tmp_path, monkeypatch):
    first = prep.prepare(options(corpus, tmp_path))
    (tmp_path / "manifest.json").unlink()  # as if killed before the end ...
    (tmp_path / "unit-00002.json").unlink()  # ... while chunk 2 was being written
    (tmp_path / "train-00002.arrayrecord.tmp").write_bytes(b"partial")
    written = []
    real = prep._write_task
    monkeypatch.setattr(prep, "_write_task", lambda args: written.append(args[0].index) or real(args))
    again = prep.prepare(options(corpus, tmp_path))
    assert written == [2]
    assert again == first
    prep.prepare(options(corpus, tmp_path))  # complete: nothing to do
    assert written == [2]


def test_refuses_a_dir_holding_other_data_unless_overwrite(corpus, prepared, tmp_path):
    prep.prepare(options(corpus, tmp_path))
    with pytest.raises(DataError, match="`overwrite` to replace it"):
        prep.prepare(options(corpus, tmp_path, eval_docs=3))
    m = prep.prepare(options(corpus, tmp_path, eval_docs=3, overwrite=True))
    assert m["splits"]["eval"]["documents"] == 3


@pytest.mark.parametrize("files, kw, words", [
    ({"x.jsonl": b'{"body": "a"}\n{"body": "b"}\n'}, {}, "no record has the field 'text' (its records have: body)"),
    ({"x.parquet": None}, {}, "has no column 'text'; its columns are content, n"),
    ({"x.txt": b"", "y.txt": b"\xff\xfe"}, {}, "no documents"),
    ({"x.jsonl": b'{"text": "waa wab"}\n{"text": "wac"}\n'}, {"eval_docs": 2}, "would hold out all 2"),
    ({"x.csv": b"a,b\n"}, {}, "unsupported file type '.csv'"),
    ({"x.jsonl": b'{"text": "waa"}\n'}, {"eos_token": "<eot>"}, "cannot find the EOS token (<eot>)"),
])
def test_bad_input_is_refused_clearly(tmp_path, files, kw, words):
    for name, data in files.items():
        if data is None:
            pq.write_table(pa.table({"content": ["a"], "n": [1]}), tmp_path / name)
        else:
            (tmp_path / name).write_bytes(data)
    tok = word_level_tokenizer(tmp_path / "tok" / "tokenizer.json", WORDS)
    opts = dict(inputs=tuple(str(tmp_path / n) for n in files), out=str(tmp_path / "o"), tokenizer=str(tok),
                eval_docs=0, progress=False)
    with pytest.raises(DataError) as err:
        prep.prepare(prep.PrepareOptions(**{**opts, **kw}))
    assert words in str(err.value)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_cli(corpus, tmp_path, capsys):
    from cpt_jax.cli.main import main

    tok = word_level_tokenizer(tmp_path / "tok" / "tokenizer.json", WORDS)
    src = str(corpus["root"] / "in" / "a.jsonl")
    assert main(["prepare", src, "--out", str(tmp_path / "o"), "--tokenizer", str(tok), "--eval-docs", "3",
                 "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_documents"] == 57 and summary["eval_documents"] == 3
    assert summary["skipped"]["invalid UTF-8"] == 1
    assert main(["prepare", src, "--out", str(tmp_path / "p"), "--tokenizer", str(tmp_path / "nope.model")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tokenizer") and "does not exist" in err


def test_hf_tokenizer_special_tokens_from_tokenizer_config(tmp_path):
    from cpt_jax.data.tokenizer import TokenizerSpec, load_tokenizer

    path = word_level_tokenizer(tmp_path / "tokenizer.json", WORDS)
    assert load_tokenizer(TokenizerSpec(str(path))).eos_id == 1  # '</s>' found by name
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": "wab"}, "bos_token": "waa"}))
    tok = load_tokenizer(TokenizerSpec(str(path), add_bos=True))
    assert (tok.eos_id, tok.bos_id) == (3, 2)
    assert tok.encode_batch(["wac wad"]) == [[2, 4, 5, 3]]


# -- fixed held-out files (--eval-inputs) ----------------------------------------------------------

RARE = "wqq"  # occurs only in the eval files, often enough that a tokenizer trained on them would learn it


@pytest.fixture(scope="module")
def split_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    train, held = documents(WORDS, 40, seed=11), documents(WORDS, 9, seed=12)
    held[0] = " ".join([RARE] * 300)
    write_jsonl(root / "train" / "a.jsonl", train[:30])
    (root / "train" / "b.txt").write_text("\n\n".join(train[30:]) + "\n")
    write_jsonl(root / "held" / "x.jsonl", held[:6])
    with open(root / "held" / "x.jsonl", "a") as f:
        f.write('{"text": ""}\n')  # a bad eval record is reported like any other
    (root / "held" / "y.txt").write_text("\n\n".join(held[6:]) + "\n")
    return {"root": root, "train": train, "held": held}


def split_options(c, out, **kw):
    base = dict(inputs=(str(c["root"] / "train"),), eval_inputs=(str(c["root"] / "held"),), out=str(out),
                train_tokenizer=120, shard_docs=4, read=ReadOptions(txt_split="blank-lines"), progress=False)
    return prep.PrepareOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def split_prepared(split_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("split_out")
    lines = []
    real = prep.train_sentencepiece
    mp = pytest.MonkeyPatch()
    mp.setattr(prep, "train_sentencepiece", lambda it, *a, **k: real((lines.append(x) or x for x in it), *a, **k))
    try:
        return out, prep.prepare(split_options(split_corpus, out)), lines
    finally:
        mp.undo()


def decoded(out, split):
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    return [sp.decode(d[:-1].tolist()) for d in read_split(out, split)]


def test_eval_inputs_are_exactly_the_eval_split(split_corpus, split_prepared):
    out, m, _ = split_prepared
    assert sorted(decoded(out, "eval")) == sorted(split_corpus["held"])
    assert sorted(decoded(out, "train")) == sorted(split_corpus["train"])  # nothing held out by hash
    train_ids = {tuple(d.tolist()) for d in read_split(out, "train")}
    assert not train_ids.intersection(tuple(d.tolist()) for d in read_split(out, "eval"))
    roles = {Path(s["path"]).name: (s["role"], s["sha256"], s["train_documents"], s["eval_documents"])
             for s in m["sources"]}
    held = split_corpus["root"] / "held"
    assert roles["x.jsonl"] == ("eval", sha256_file(held / "x.jsonl"), 0, 6)
    assert roles["y.txt"] == ("eval", sha256_file(held / "y.txt"), 0, 3)
    assert roles["a.jsonl"][0] == "train" and roles["a.jsonl"][3] == 0
    assert [Path(f["path"]).name for f in m["eval_selection"]["eval_files"]] == ["x.jsonl", "y.txt"]
    assert m["skipped"]["by_reason"] == {"empty document": 1}
    assert m["skipped"]["records"][0]["file"].endswith("x.jsonl")


def test_tokenizer_is_trained_without_the_eval_files(split_corpus, split_prepared):
    out, _, lines = split_prepared
    assert sorted(lines) == sorted(split_corpus["train"])  # the trainer saw the training documents only
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.piece_to_id("▁" + RARE) == sp.unk_id()
    assert len(sp.encode(RARE)) > 1


def test_eval_inputs_rerun_skips_finished_shards(split_corpus, tmp_path, monkeypatch):
    first = prep.prepare(split_options(split_corpus, tmp_path))
    last = max(int(p.stem.split("-")[1]) for p in tmp_path.glob("eval-*.arrayrecord"))
    (tmp_path / "manifest.json").unlink()
    (tmp_path / f"unit-{last:05d}.json").unlink()  # killed while writing the last eval shard
    written = []
    real = prep._write_task
    monkeypatch.setattr(prep, "_write_task", lambda args: written.append(args[0].index) or real(args))
    assert prep.prepare(split_options(split_corpus, tmp_path)) == first
    assert written == [last]
    # the eval files are part of the input: other eval content is other data
    other = tmp_path.parent / f"{tmp_path.name}-other_held.jsonl"  # not inside out: that is prepare's own
    write_jsonl(other, documents(WORDS, 3, seed=99))
    with pytest.raises(DataError, match="`overwrite` to replace it"):
        prep.prepare(split_options(split_corpus, tmp_path, eval_inputs=(str(other),)))


@pytest.mark.parametrize("kw, words", [
    ({"eval_docs": 5}, "`eval_inputs` cannot be combined with `eval_docs`/`eval_fraction`"),
    ({"eval_fraction": 0.1}, "`eval_inputs` cannot be combined with `eval_docs`/`eval_fraction`"),
    ({"eval_inputs": ("train/a.jsonl",)}, "a.jsonl is both a training input and an `eval_inputs` file"),
    ({"eval_inputs": ("copy.jsonl",)}, "has the same content as training input"),
    ({"eval_inputs": ("nothing.jsonl",)}, "no eval documents"),
    ({"eval_inputs": ("missing",)}, "`eval_inputs`: input"),
])
def test_eval_inputs_conflicts_are_refused(split_corpus, tmp_path, kw, words):
    root = split_corpus["root"]
    (tmp_path / "copy.jsonl").write_bytes((root / "train" / "a.jsonl").read_bytes())
    (tmp_path / "nothing.jsonl").write_text('{"text": " "}\n')
    if "eval_inputs" in kw:
        kw = {"eval_inputs": tuple(str(root / p if p.startswith("train") else tmp_path / p) for p in kw["eval_inputs"])}
    with pytest.raises(DataError) as err:
        prep.prepare(split_options(split_corpus, tmp_path / "o", **kw))
    assert words in str(err.value)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_cli_eval_inputs(split_corpus, tmp_path, capsys):
    from cpt_jax.cli.main import main

    tok = word_level_tokenizer(tmp_path / "tok" / "tokenizer.json", WORDS + [RARE])
    root = split_corpus["root"]
    args = ["prepare", str(root / "train"), "--out", str(tmp_path / "o"), "--tokenizer", str(tok),
            "--txt-split", "blank-lines", "--quiet", "--eval-inputs", str(root / "held" / "x.jsonl")]
    assert main(args + [str(root / "held" / "y.txt")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["train_documents"], summary["eval_documents"]) == (40, 9)
    assert main(args + ["--eval-docs", "3"]) == 2
    assert "--eval-docs/--eval-fraction" in capsys.readouterr().err


# -- BOS follows the upstream tokenizer ------------------------------------------------------------

def test_bos_follows_tokenizer_config_and_template_unless_overridden(tmp_path):
    from tokenizers import Tokenizer, processors

    from cpt_jax.data.tokenizer import TokenizerSpec, load_tokenizer

    path = word_level_tokenizer(tmp_path / "tokenizer.json", WORDS)
    config = tmp_path / "tokenizer_config.json"
    tok = load_tokenizer(TokenizerSpec(str(path)))
    assert (tok.add_bos, tok.encode_batch(["wac"])) == (False, [[4, 1]])  # nothing asks for BOS
    config.write_text(json.dumps({"bos_token": "waa", "add_bos_token": True}))  # Llama 1/2 HF config
    tok = load_tokenizer(TokenizerSpec(str(path)))
    assert tok.encode_batch(["wac"]) == [[2, 4, 1]] and "add_bos_token=True" in tok.add_bos_reason
    assert load_tokenizer(TokenizerSpec(str(path), add_bos=False)).encode_batch(["wac"]) == [[4, 1]]
    config.write_text(json.dumps({"bos_token": "waa", "add_bos_token": False}))
    assert load_tokenizer(TokenizerSpec(str(path))).encode_batch(["wac"]) == [[4, 1]]
    assert load_tokenizer(TokenizerSpec(str(path), add_bos=True)).encode_batch(["wac"]) == [[2, 4, 1]]
    config.unlink()
    hf = Tokenizer.from_file(str(path))  # Llama 3 style: the template puts BOS first
    hf.post_processor = processors.TemplateProcessing(single="wab $A", special_tokens=[("wab", 3)])
    hf.save(str(path))
    tok = load_tokenizer(TokenizerSpec(str(path)))
    assert tok.encode_batch(["wac"]) == [[3, 4, 1]] and "post-processor starts with wab" in tok.add_bos_reason


def test_bos_follows_sentencepiece_and_is_recorded(corpus, tmp_path, capsys):
    from cpt_jax.cli.main import main
    from cpt_jax.data.tokenizer import TokenizerSpec, load_tokenizer, train_sentencepiece

    model = tmp_path / "upstream.model"
    train_sentencepiece(corpus["texts"][:30], model, 120)  # has bos_id 1, like Llama's models
    tok = load_tokenizer(TokenizerSpec(str(model)))
    assert tok.add_bos and tok.encode_batch(["x"])[0][0] == tok.bos_id == 1
    assert not load_tokenizer(TokenizerSpec(str(model), trained_here=True)).add_bos  # prepare's own: no upstream
    src = str(corpus["root"] / "in" / "a.jsonl")
    for flags, want in (([], True), (["--no-add-bos"], False)):
        out = tmp_path / f"o{len(flags)}"
        assert main(["prepare", src, "--out", str(out), "--tokenizer", str(model), "--eval-docs", "3", "--quiet",
                     *flags]) == 0
        assert json.loads(capsys.readouterr().out)["add_bos"] is want
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["tokenizer"]["add_bos"] is want and manifest["options"]["add_bos"] == ("auto" if want else False)
        p = open_prepared(out)
        first = PreparedDocs(p.splits["train"].shards, p.splits["train"].lengths, p.dtype, p.chunk_tokens)[0]
        assert bool(first[0] == 1) is want


def test_long_documents_are_stored_in_chunks_and_read_by_slice(corpus, tmp_path, monkeypatch):
    from cpt_jax.data import manifest as mf

    monkeypatch.setattr(mf, "CHUNK_TOKENS", 8)
    out = tmp_path / "chunked"
    prep.prepare(options(corpus, out, workers=1))
    p = open_prepared(out)
    assert p.chunk_tokens == 8
    lengths = p.splits["train"].lengths
    docs = PreparedDocs(p.splits["train"].shards, lengths, p.dtype, p.chunk_tokens)
    import grain

    records = sum(len(grain.sources.ArrayRecordDataSource([s])) for s in p.splits["train"].shards)
    assert records == int(np.sum(-(-lengths // 8))) > len(lengths)
    monkeypatch.undo()
    prep.prepare(options(corpus, tmp_path / "whole"))
    whole = read_split(tmp_path / "whole", "train")  # the default chunking: one record per document here
    for i in range(len(lengths)):
        np.testing.assert_array_equal(docs[i], whole[i])
        n = int(lengths[i])
        for start, stop in ((0, 1), (3, min(n, 19)), (max(0, n - 9), n)):
            np.testing.assert_array_equal(docs.read(i, start, stop), whole[i][start:stop])
