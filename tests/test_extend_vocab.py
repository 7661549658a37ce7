"""`cpt-jax extend-vocab`: a tiny model and a sentencepiece tokenizer extended with new pieces,
through prepare, one CPT phase from the extended checkpoint and export to transformers; the
tied/HF-folder/tokenizer.json path; and every refusal."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

from cpt_jax.checkpoint.model_checkpoint import load_model_checkpoint, read_meta, save_model_checkpoint
from cpt_jax.cli.main import main
from cpt_jax.data.tokenizer import train_sentencepiece
from cpt_jax.model.config import ModelConfig
from cpt_jax.model.params import abstract_model, abstract_params

NEW_WORDS = ("zebrafish", "quokkas", "tundra")  # spelled with the old alphabet, not old pieces
NEW_PIECES = [("▁zebrafish", "NORMAL"), ("▁quokkas", "NORMAL"), ("▁tundra", "USER_DEFINED"), ("ness", "NORMAL")]


def pseudo_text(n: int, seed: int) -> list[str]:
    """Lines of pseudo-words over a small alphabet: enough for a ~200-piece unigram model."""
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = ["".join(rng.choice(letters, rng.integers(2, 7))) for _ in range(120)]
    return [" ".join(rng.choice(words, 12)) for _ in range(n)]


def extend_spm(old: str, new: str, pieces: list[tuple[str, str]]) -> None:
    """Append pieces ((piece, "NORMAL" or "USER_DEFINED")) to a sentencepiece model, so old ids
    keep their positions."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(old).read_bytes())
    for piece, kind in pieces:
        p = proto.pieces.add()
        p.piece, p.type = piece, sentencepiece_model_pb2.ModelProto.SentencePiece.Type.Value(kind)
        p.score = 0.0 if kind == "USER_DEFINED" else -1.0  # as the sentencepiece trainer scores them
    Path(new).write_bytes(proto.SerializeToString())


def logits(path, tokens):
    params, cfg, _ = load_model_checkpoint(path)
    graphdef, _ = abstract_model(cfg)
    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t, None, None))  # compiling beats eager here
    return np.asarray(forward(params, tokens)), params


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """(old .model, extended .model, old model checkpoint whose vocab is the old tokenizer's)."""
    import sentencepiece as spm

    work = tmp_path_factory.mktemp("extend")
    train_sentencepiece(pseudo_text(400, 0), work / "old.model", 200)
    old_size = spm.SentencePieceProcessor(model_file=str(work / "old.model")).get_piece_size()
    extend_spm(work / "old.model", work / "new.model", NEW_PIECES)
    cfg = ModelConfig(family="llama", vocab_size=old_size, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=64)
    rng = np.random.default_rng(3)  # random weights from numpy: nnx's own init takes seconds here
    params = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(x.dtype), abstract_params(cfg))
    save_model_checkpoint(work / "old_ckpt", params, cfg, {"source": {}}, tokenizer_dir=None)
    return work / "old.model", work / "new.model", work / "old_ckpt"


def test_extended_model_prepares_trains_and_exports(spm_model, tmp_path, capsys):
    import sentencepiece as spm

    old_tok, new_tok, old_ckpt = spm_model
    old_sp, new_sp = (spm.SentencePieceProcessor(model_file=str(p)) for p in (old_tok, new_tok))
    old_size, new_size = old_sp.get_piece_size(), new_sp.get_piece_size()
    ext = tmp_path / "ext"
    assert cli("extend-vocab", old_ckpt, "--tokenizer", new_tok, "--old-tokenizer", old_tok, "--out", ext) == 0
    assert "model section" in capsys.readouterr().out
    meta = read_meta(ext)
    assert meta["model"]["vocab_size"] == 256 and meta["vocab"]["tokenizer_size"] == new_size == old_size + 4
    assert (ext / "tokenizer" / "tokenizer.model").read_bytes() == new_tok.read_bytes()

    # Old columns of the logits are unchanged on old-token text; the old rows are bit-identical.
    tokens = np.random.default_rng(0).integers(3, old_size, (2, 16))
    before, old_params = logits(old_ckpt, tokens)
    after, params = logits(ext, tokens)
    assert after.shape[-1] == 256
    assert np.abs(after[..., :old_size] - before).max() <= 1e-6
    for name in ("embed", "lm_head"):
        old_w, w = np.asarray(old_params[name]), np.asarray(params[name])
        old_rows, rows = (old_w, w) if name == "embed" else (old_w.T, w.T)
        assert np.array_equal(rows[:old_size], old_rows)
        # a new word's row is the mean of the rows of the pieces the OLD tokenizer splits it into
        for k, word in enumerate(NEW_WORDS):
            pieces = old_sp.encode(word)
            assert len(pieces) > 1 and new_sp.encode(word) == [old_size + k]
            np.testing.assert_allclose(rows[old_size + k], old_rows[pieces].mean(0), rtol=1e-6, atol=1e-7)
        # padding rows: the mean of all old rows
        np.testing.assert_allclose(rows[new_size:], np.broadcast_to(old_rows.mean(0), rows[new_size:].shape),
                                   rtol=1e-5, atol=1e-7)

    # prepare with the new tokenizer, train one CPT phase from the extended checkpoint, export.
    lines = [f"{line} {NEW_WORDS[i % 3]} darkness" for i, line in enumerate(pseudo_text(200, 1))]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    tokenizer = ext / "tokenizer" / "tokenizer.model"
    assert cli("prepare", tmp_path / "text.jsonl", "--out", tmp_path / "data", "--tokenizer", tokenizer,
               "--eval-docs", 16, "--quiet") == 0
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == new_size
    plan = {"run_dir": str(tmp_path / "run"), "tokenizer": str(tokenizer), "model": meta["model"],
            "data": {"seq_len": 32, "global_batch_size": 8, "sources": {"new": {"path": str(tmp_path / "data")}}},
            "log": {"tensorboard": False}, "eval": {"every": 3, "batches": 1},
            "phases": [{"name": "cpt", "init": f"ckpt:{ext}", "steps": 3, "mixture": {"new": 1.0},
                        "schedule": {"shape": "constant", "peak_lr": 1e-3}}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    assert cli("train", tmp_path / "plan.yaml", "--no-progress") == 0
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 3] and evals[1]["loss"] < evals[0]["loss"]
    assert cli("export-hf", tmp_path / "run", tmp_path / "hf") == 0

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert model.config.vocab_size == 256 and model.get_input_embeddings().weight.shape[0] == 256
    assert len(tok) == new_size
    text = lines[0]
    assert tok(text).input_ids == new_sp.encode(text) and old_size + NEW_WORDS.index("zebrafish") in \
        tok("zebrafish").input_ids

    # A run step extends again: its tokenizer is found from the run's plan; the rows stay 256.
    extend_spm(tokenizer, tmp_path / "newer.model", [("▁okapi", "NORMAL")])
    assert cli("extend-vocab", f"{tmp_path / 'run'}@3", "--tokenizer", tmp_path / "newer.model",
               "--out", tmp_path / "ext2") == 0
    meta2 = read_meta(tmp_path / "ext2")
    assert meta2["vocab"]["tokenizer_size"] == new_size + 1 and meta2["model"]["vocab_size"] == 256
    trained, again = (np.asarray(load_model_checkpoint(p)[0]["embed"]) for p in (tmp_path / "run", tmp_path / "ext2"))
    assert np.array_equal(again[:new_size], trained[:new_size])
    np.testing.assert_allclose(again[new_size], trained[new_sp.encode("okapi")].mean(0), rtol=1e-6, atol=1e-7)
    # What a run started from it without a plan tokenizer holds: no tokenizer/, the metadata's
    # tokenizer_dir. Export then ships the extended tokenizer, not one the model came from earlier.
    shutil.copytree(tmp_path / "ext2", tmp_path / "bare")
    shutil.rmtree(tmp_path / "bare" / "tokenizer")
    assert cli("export-hf", tmp_path / "bare", tmp_path / "hf2") == 0
    assert (tmp_path / "hf2" / "tokenizer.model").read_bytes() == (tmp_path / "newer.model").read_bytes()


def test_tied_hf_folder_with_added_tokens(tmp_path):
    """An HF folder (tied embeddings, word-level tokenizer.json) extended with added tokens; the
    rows of a non-special added token are the mean of its old pieces'; random init is seeded."""
    from hf_fixtures import hf_logits, load_hf_model, make_tiny_hf_model
    from tokenizers import AddedToken, Tokenizer
    from transformers import AutoTokenizer

    from cpt_jax.hf import export_hf
    from cpt_jax.surgery.extend_vocab import extend_vocab

    hf_dir = make_tiny_hf_model(tmp_path / "hf", "llama", tie=True)  # (qwen2 maps to Qwen2Tokenizer: BPE only)
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    tok.add_tokens(["w5 w9"])
    tok.add_special_tokens([AddedToken("<|new|>", special=True)])
    (tmp_path / "new").mkdir()
    tok.save(str(tmp_path / "new" / "tokenizer.json"))
    shutil.copy(hf_dir / "tokenizer_config.json", tmp_path / "new")
    out = extend_vocab(hf_dir, tmp_path / "new" / "tokenizer.json", tmp_path / "ext", pad_multiple=64)
    meta = read_meta(out)
    assert meta["model"]["vocab_size"] == 192 and meta["model"]["tie_embeddings"]
    assert meta["vocab"]["tokenizer_size"] == 162 and meta["vocab"]["unsplit_tokens"] == 1
    upstream, _ = load_hf_model(hf_dir)
    old_embed = upstream.get_input_embeddings().weight.detach().numpy()
    tokens = np.random.default_rng(1).integers(3, 160, (2, 12))
    after, params = logits(out, tokens)
    assert np.abs(after[..., :160] - hf_logits(upstream, tokens)).max() <= 1e-4  # HF vs cpt_jax: fp32 tolerance
    embed = np.asarray(params["embed"])
    assert np.array_equal(embed[:160], old_embed)
    np.testing.assert_allclose(embed[160], old_embed[[5, 9]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(embed[161:], np.broadcast_to(old_embed.mean(0), (31, old_embed.shape[1])),
                               rtol=1e-5, atol=1e-7)  # the special token and the padding: mean of all
    hf_tok = AutoTokenizer.from_pretrained(export_hf(out, tmp_path / "hf_out"))
    assert hf_tok("w3 w5 w9 <|new|>").input_ids == [3, 160, 161]

    rand = [np.asarray(load_model_checkpoint(extend_vocab(hf_dir, tmp_path / "new" / "tokenizer.json",
                                                          tmp_path / f"r{i}", init="random", seed=7))[0]["embed"])
            for i in range(2)]
    assert np.array_equal(rand[0], rand[1]) and np.array_equal(rand[0][:160], old_embed)
    assert 0.01 < rand[0][160].std() < 0.03 and np.array_equal(rand[0][161], embed[161])  # initializer_range 0.02


def test_refusals_name_the_problem_and_write_nothing(spm_model, tmp_path, capsys):
    from sentencepiece import sentencepiece_model_pb2

    old_tok, new_tok, old_ckpt = spm_model
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(new_tok.read_bytes())
    proto.pieces[10].piece, proto.pieces[11].piece = proto.pieces[11].piece, proto.pieces[10].piece
    (tmp_path / "swapped.model").write_bytes(proto.SerializeToString())
    del proto.pieces[-40:]
    (tmp_path / "smaller.model").write_bytes(proto.SerializeToString())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    out = tmp_path / "out"
    cases = [
        (["--tokenizer", tmp_path / "swapped.model", "--out", out], "token id 10"),
        (["--tokenizer", tmp_path / "smaller.model", "--out", out], "not more than"),
        (["--tokenizer", old_tok, "--out", out], "not more than"),
        (["--tokenizer", tmp_path / "missing.model", "--out", out], "does not exist"),
        (["--tokenizer", new_tok, "--out", tmp_path / "full"], "not empty"),
        (["--tokenizer", new_tok, "--out", out, "--init", "zeros"], "unknown init"),
    ]
    for args, message in cases:
        assert cli("extend-vocab", old_ckpt, "--old-tokenizer", old_tok, *args) == 2
        assert message in capsys.readouterr().err, message
    assert cli("extend-vocab", tmp_path / "nope", "--tokenizer", new_tok, "--out", out) == 2
    assert "model" in capsys.readouterr().err
    # the checkpoint was saved without a tokenizer: the old one cannot be found by itself
    assert cli("extend-vocab", old_ckpt, "--tokenizer", new_tok, "--out", out) == 2
    assert "cannot find the tokenizer" in capsys.readouterr().err
    assert not out.exists() and (tmp_path / "full" / "x").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "smaller.model", "swapped.model"]
