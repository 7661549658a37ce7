"""Tokenizers in exports: a sentencepiece model trained by `cpt-jax prepare` ships as an
equivalent tokenizer.json that AutoTokenizer loads and that encodes exactly as sentencepiece."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cpt_jax.checkpoint.model_checkpoint import save_model_checkpoint
from cpt_jax.model.config import ModelConfig
from cpt_jax.data.tokenizer import train_sentencepiece
from cpt_jax.hf import export_hf
from cpt_jax.model.params import abstract_params

TEXTS = ["alpha  beta\tgamma\n delta", "  déjà vu ", "naïve x=1 ☃ unseen-chars ü", "def f(self):\n    return 1"]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "déjà", "vu", "naïve", "x=1", "def", "(self):", "中文"]
    lines = [" ".join(rng.choice(words, 12)) for _ in range(400)]
    path = tmp_path_factory.mktemp("sp") / "sp.model"
    train_sentencepiece(lines, path, 600)
    return path


def test_sentencepiece_model_becomes_an_equivalent_hf_tokenizer(sp_model, tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from cpt_jax.hf.spm_tokenizer import spm_to_hf_tokenizer

    spm_to_hf_tokenizer(sp_model, tmp_path, 128)
    sp, hf = spm.SentencePieceProcessor(model_file=str(sp_model)), AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert hf(text).input_ids == sp.encode(text), text
        assert hf.decode(sp.encode(text)) == sp.decode(sp.encode(text))


def test_export_ships_the_run_tokenizer_and_its_special_ids(sp_model, tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    cfg = ModelConfig(vocab_size=sp.get_piece_size(), hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                      max_position_embeddings=64)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract_params(cfg))
    ckpt = save_model_checkpoint(tmp_path / "ckpt", params, cfg, {})
    out = export_hf(ckpt, tmp_path / "out", tokenizer_file=sp_model)
    assert (out / "tokenizer.model").read_bytes() == sp_model.read_bytes()
    hf_cfg = json.loads((out / "config.json").read_text())
    assert (hf_cfg["bos_token_id"], hf_cfg["eos_token_id"]) == (sp.bos_id(), sp.eos_id())
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (sp.bos_id(), sp.eos_id())
    tok = AutoTokenizer.from_pretrained(out)
    assert all(tok(t).input_ids == sp.encode(t) for t in TEXTS)
