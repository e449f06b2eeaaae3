"""Vocabularies with the `tokenizers` library: fitted on training text only, or a pretrained
text model's own fast tokenizer; either way saved as JSON (the checkpoint carries it).

torchtext stopped at torch 2.3, so it cannot be used with a current torch.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordLevel
from tokenizers.trainers import BpeTrainer, WordLevelTrainer

from mmtrain.errors import ConfigError

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIALS = [PAD, UNK, BOS, EOS]  # ids 0..3, in this order
MAX_LENGTH = 65_536
"""The longest max_length a tokenizer read from a checkpoint may have: every text is padded
to it, so 10**9 would be 8 GB per text (long-context models stop at 32k)."""
TOKENIZER_OPTIONS: dict[str, Any] = {"kind": "word", "vocab_size": 10000, "min_frequency": 1,
                                     "lowercase": True, "max_length": 64}


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the fixed length texts are cut to.

    `specials` names its pad/unk/bos/eos tokens when they are not mmtrain's own (a pretrained
    model's tokenizer: [CLS]/[SEP], <s>/</s>, ...); such a tokenizer adds the model's special
    tokens itself and is truncated by the library, so the closing [SEP] survives a long text.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int,
                 specials: dict[str, str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.specials = dict(specials) if specials else None
        names = self.specials or {"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS}
        self.pad_id = tokenizer.token_to_id(names["pad"])
        self.unk_id = tokenizer.token_to_id(names["unk"])
        self.bos_id = tokenizer.token_to_id(names["bos"])
        self.eos_id = tokenizer.token_to_id(names["eos"])
        if self.specials:
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids N x max_length padded with pad_id, lengths N); empty texts keep one UNK."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        lengths = torch.empty(len(texts), dtype=torch.long)
        for i, enc in enumerate(encodings):
            row = enc.ids[: self.max_length] or [self.unk_id]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            lengths[i] = len(row)
        return ids, lengths

    @property
    def wraps(self) -> bool:
        """Whether encoding already puts bos first and eos last (a pretrained tokenizer's
        template: BERT's [CLS] ... [SEP], CLIP's start ... end); mmtrain's own adds neither."""
        ids = self.tokenizer.encode("a").ids
        return len(ids) >= 2 and ids[0] == self.bos_id and ids[-1] == self.eos_id

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def to_json(self) -> str:
        obj: dict[str, Any] = {"tokenizer": self.tokenizer.to_str(), "max_length": self.max_length}
        if self.specials:
            obj["specials"] = self.specials
        return json.dumps(obj)

    @classmethod
    def from_json(cls, text: str) -> "TextTokenizer":
        obj = json.loads(text)
        return cls(Tokenizer.from_str(obj["tokenizer"]), int(obj["max_length"]), obj.get("specials"))


def pretrained_tokenizer(name: str, max_length: int, what: str = "model.text_encoder") -> TextTokenizer:
    """The fast tokenizer of a Hugging Face model (a hub id, through transformers' own download
    and cache, or a local folder), as a TextTokenizer cutting texts to `max_length` tokens."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(name, use_fast=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{what}.name={name}: cannot load its tokenizer ({first})") from None
    return hf_tokenizer(hf, max_length, name, what)


def hf_tokenizer(hf: Any, max_length: int, name: str, what: str = "model.text_encoder") -> TextTokenizer:
    """A loaded transformers tokenizer as a TextTokenizer (a copy of its fast backend)."""
    if not hf.is_fast:
        raise ConfigError(f"{what}.name={name} has no fast tokenizer (tokenizer.json): save one "
                          f"with AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained")
    limit = getattr(hf, "model_max_length", None)
    if isinstance(limit, int) and max_length > limit:
        raise ConfigError(f"data.tokenizer_options.max_length={max_length} is longer than {name} "
                          f"accepts ({limit} tokens): lower it")
    pad = hf.pad_token or hf.eos_token  # GPT-style tokenizers pad with their eos token
    if pad is None:
        raise ConfigError(f"{what}.name={name}: its tokenizer has neither a pad nor an eos token")
    specials = {"pad": pad, "unk": hf.unk_token or pad, "bos": hf.cls_token or hf.bos_token or pad,
                "eos": hf.sep_token or hf.eos_token or pad}
    # A copy of the backend, so its truncation/padding settings are ours alone.
    return TextTokenizer(Tokenizer.from_str(hf.backend_tokenizer.to_str()), max_length, specials)


# OpenAI CLIP's word split: contractions, letter runs, single digits, other symbol runs.
CLIP_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_bpe_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], bos: str, eos: str,
                       max_length: int) -> TextTokenizer:
    """OpenAI CLIP's byte-level BPE (open_clip's SimpleTokenizer) as a fast tokenizer: NFC,
    whitespace runs to one space, lowercase; CLIP's word split; bytes mapped to characters;
    BPE with an end-of-word suffix; bos ... eos around every text. It gives SimpleTokenizer's
    ids for any text that its ftfy/HTML-entity repair leaves unchanged."""
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>",
                        continuing_subword_prefix="", fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Strip(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.add_special_tokens([bos, eos])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " "),
                                     decoders.Strip(" ", 0, 1)])
    return TextTokenizer(tok, max_length, {"pad": eos, "unk": eos, "bos": bos, "eos": eos})


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
