"""Vocabularies with the `tokenizers` library: fitted on training text only, saved as JSON.

torchtext stopped at torch 2.3, so it cannot be used with a current torch.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordLevel
from tokenizers.trainers import BpeTrainer, WordLevelTrainer

from mmtrain.errors import ConfigError

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIALS = [PAD, UNK, BOS, EOS]  # ids 0..3, in this order
TOKENIZER_OPTIONS: dict[str, Any] = {"kind": "word", "vocab_size": 10000, "min_frequency": 1,
                                     "lowercase": True, "max_length": 64}


class TextTokenizer:
    """A fitted `tokenizers.Tokenizer` plus the fixed length texts are cut to."""

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.token_to_id(PAD)
        self.bos_id = tokenizer.token_to_id(BOS)
        self.eos_id = tokenizer.token_to_id(EOS)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids N x max_length padded with pad_id, lengths N); empty texts keep one UNK."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        lengths = torch.empty(len(texts), dtype=torch.long)
        unk = self.tokenizer.token_to_id(UNK)
        for i, enc in enumerate(encodings):
            row = enc.ids[: self.max_length] or [unk]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            lengths[i] = len(row)
        return ids, lengths

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def to_json(self) -> str:
        return json.dumps({"tokenizer": self.tokenizer.to_str(), "max_length": self.max_length})

    @classmethod
    def from_json(cls, text: str) -> "TextTokenizer":
        obj = json.loads(text)
        return cls(Tokenizer.from_str(obj["tokenizer"]), int(obj["max_length"]))


def fit_tokenizer(texts: list[str], **options: Any) -> TextTokenizer:
    """Fit a vocabulary on `texts` (the training split only) with `data.tokenizer_options`:
    kind (word | bpe), vocab_size, min_frequency, lowercase, max_length."""
    unknown = sorted(set(options) - set(TOKENIZER_OPTIONS))
    if unknown:
        raise ConfigError(f"data.tokenizer_options.{unknown[0]}: no such option "
                          f"(valid: {', '.join(TOKENIZER_OPTIONS)})")
    opts = {**TOKENIZER_OPTIONS, **options}
    kind, vocab_size, min_frequency = opts["kind"], opts["vocab_size"], opts["min_frequency"]
    if kind == "word":
        tok = Tokenizer(WordLevel(unk_token=UNK))
        trainer = WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                   special_tokens=SPECIALS)
    elif kind == "bpe":
        # The end-of-word suffix lets decode() glue subwords back into words (captions, BLEU).
        tok = Tokenizer(BPE(unk_token=UNK, end_of_word_suffix="</w>"))
        trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                             special_tokens=SPECIALS, end_of_word_suffix="</w>")
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
    else:
        raise ConfigError(f"data.tokenizer_options.kind={kind!r}: choose word or bpe")
    lowercase, max_length = opts["lowercase"], opts["max_length"]
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok, max_length)
