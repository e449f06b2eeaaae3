"""Vocabularies with the `tokenizers` library: fitted on training text only, saved as JSON.

torchtext stopped at torch 2.3, so it cannot be used with a current torch.
"""

from __future__ import annotations

import json

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordLevel
from tokenizers.trainers import BpeTrainer, WordLevelTrainer

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIALS = [PAD, UNK, BOS, EOS]  # ids 0..3, in this order


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


def fit_tokenizer(
    texts: list[str],
    kind: str = "word",
    vocab_size: int = 10000,
    min_frequency: int = 1,
    lowercase: bool = True,
    max_length: int = 64,
) -> TextTokenizer:
    """Fit a word-level or BPE vocabulary on `texts` (the training split only)."""
    if kind == "word":
        tok = Tokenizer(WordLevel(unk_token=UNK))
        trainer = WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                   special_tokens=SPECIALS)
    elif kind == "bpe":
        tok = Tokenizer(BPE(unk_token=UNK))
        trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                             special_tokens=SPECIALS)
    else:
        from mmtrain.errors import ConfigError

        raise ConfigError(f"data.tokenizer.kind={kind!r}: choose word or bpe")
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok, max_length)
