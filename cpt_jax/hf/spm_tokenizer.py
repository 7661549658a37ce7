"""A sentencepiece unigram model as a Hugging Face `tokenizer.json` (tokenizers library).

Written by hand because transformers' converter is a test-only dependency here, and
`tokenizers`' own `from_spm` needs a protobuf module it does not ship; sentencepiece ships one.
The pieces, scores, normaliser (the model's precompiled charmap) and byte fallback are taken
from the model itself, so ids match `sentencepiece.encode` exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers


def spm_to_hf_tokenizer(model_file: str | Path, out_dir: str | Path, max_length: int) -> None:
    from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    if proto.trainer_spec.model_type != 1:  # 1 = UNIGRAM
        raise ValueError("only unigram sentencepiece models are converted")
    sp = SentencePieceProcessor(model_file=str(model_file))
    vocab = [(p.piece, p.score) for p in proto.pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=proto.trainer_spec.byte_fallback))
    norm = []
    if proto.normalizer_spec.precompiled_charsmap:
        norm.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    if proto.normalizer_spec.remove_extra_whitespaces:
        norm += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(norm)
    prepend = "always" if proto.normalizer_spec.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=False)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme=prepend, split=False)])
    out = Path(out_dir)
    tok.save(str(out / "tokenizer.json"))
    piece = lambda i: sp.id_to_piece(i) if 0 <= i < sp.get_piece_size() else None  # noqa: E731
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": piece(sp.bos_id()), "eos_token": piece(sp.eos_id()),
        "unk_token": piece(sp.unk_id()), "model_max_length": max_length, "clean_up_tokenization_spaces": False},
        indent=2))
