"""Tiny translation and masked-LM models built locally, for tests, benchmarks and offline demos.

No hub access is needed: a WordPiece (BERT) or BPE (Marian) tokenizer is trained with the
``tokenizers`` library on the given texts, and the model gets random weights from a config
(seeded).  The outputs are meaningless; the mechanics (batching, masking, decoding, lineage)
are the real ones, and the directories load with ``from_pretrained`` like any checkpoint.

    python -m augment.tiny --texts tests/data/general_zh.jsonl tests/data/general_en.jsonl --output models/tiny
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from etl.core.cli import ArgumentParser
from etl.core.errors import run_main


def _bert_tokenizer(texts: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def _marian_tokenizer(texts: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def build_tiny_bert(output: str | os.PathLike, texts: list[str], hidden: int = 32, layers: int = 2, vocab_size: int = 2000, seed: int = 0,
                    heads: int | None = None, intermediate: int | None = None, model_vocab_size: int | None = None) -> str:
    """A random-weight ``BertForMaskedLM`` and its trained WordPiece tokenizer, saved to ``output``.

    ``hidden=768, layers=12, heads=12, intermediate=3072, model_vocab_size=21128`` is the shape
    of bert-base-chinese.  ``model_vocab_size`` pads the embedding matrix and prediction head past
    the tokenizer (small corpora cannot train 21128 WordPieces); ids past the tokenizer never
    occur in inputs and are never chosen as fills."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = _bert_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=max(len(tokenizer), model_vocab_size or 0), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads or max(1, hidden // 16), intermediate_size=intermediate or hidden * 4,
                        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    BertForMaskedLM(config).save_pretrained(output)
    tokenizer.save_pretrained(output)
    return str(output)


def build_tiny_marian(output: str | os.PathLike, texts: list[str], d_model: int = 32, layers: int = 2, vocab_size: int = 2000,
                      ffn_dim: int | None = None, heads: int | None = None, seed: int = 0) -> str:
    """A random-weight ``MarianMTModel`` and its trained BPE tokenizer, saved to ``output``.
    ``d_model=512, layers=6, vocab_size=~60000`` is the size of the opus-mt models."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    tokenizer = _marian_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = MarianConfig(vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                          encoder_attention_heads=heads or max(1, d_model // 16), decoder_attention_heads=heads or max(1, d_model // 16),
                          encoder_ffn_dim=ffn_dim or d_model * 4, decoder_ffn_dim=ffn_dim or d_model * 4, max_position_embeddings=512,
                          pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, forced_eos_token_id=eos)
    MarianMTModel(config).save_pretrained(output)
    tokenizer.save_pretrained(output)
    return str(output)


def read_texts(paths: Iterable[str | os.PathLike], max_chars: int = 4000) -> list[str]:
    """The ``text`` fields of JSON Lines files (first ``max_chars`` of each)."""
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            texts.extend(json.loads(line).get("text", "")[:max_chars] for line in handle if line.strip())
    return [t for t in texts if t]


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m augment.tiny", description="Build tiny random-weight Marian and BERT models for offline runs.")
    parser.add_argument("--texts", nargs="+", required=True, help="JSON Lines files whose text trains the tokenizers")
    parser.add_argument("--output", required=True, help="directory; receives marian/ and bert/")
    args = parser.parse_args(argv)
    texts = read_texts(args.texts)
    out = Path(args.output)
    print(build_tiny_marian(out / "marian", texts), build_tiny_bert(out / "bert", texts))


if __name__ == "__main__":
    run_main(main)
