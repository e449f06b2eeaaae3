"""Image captioning: a Transformer decoder over the image encoder's tokens.

Trained with teacher forcing ([BOS] + caption -> caption + [EOS]); evaluated by decoding
(greedy, or beam search with `beam_size` > 1) and scoring BLEU-1..4, ROUGE-L and CIDEr-D
with `mmtrain.metrics.caption_scores` (coco-caption's figures) against every raw reference
caption of an image: batches with `image_id` group COCO's five per image, and the data's
`DataInfo.references` holds their text as the annotation file has it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mmtrain.data import DataInfo
from mmtrain.data.tokenizer import BOS, EOS, SPECIALS
from mmtrain.errors import ConfigError
from mmtrain.metrics import caption_scores
from mmtrain.models.model import MultimodalModel
from mmtrain.tasks import Batch, Evaluation, Task

IGNORE = -100
"""A target position that is not scored (past a caption's end): F.cross_entropy's default."""


class CaptionDecoder(nn.Module):
    """Caption ids B x T attend causally to themselves and fully to the image memory -> logits B x T x V."""

    def __init__(self, vocab_size: int, image_dim: int, max_length: int, pad_id: int = 0,
                 dim: int = 256, depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        # Tied with the output layer below: unit-variance logits at init need std dim^-1/2.
        nn.init.normal_(self.embed.weight, std=dim**-0.5)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        self.pos = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        self.memory_proj = nn.Linear(image_dim, dim)
        layer = nn.TransformerDecoderLayer(dim, heads, int(dim * mlp_ratio), dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, depth)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size, bias=False)
        self.out.weight = self.embed.weight  # tied: fewer parameters, better rare-word estimates

    def memory(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.memory_proj(image_tokens)                            # B x N x dim

    def forward(self, ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=ids.device)
        x = self.embed(ids) + self.pos[:, :t]
        return self.out(self.norm(self.layers(x, memory, tgt_mask=causal, tgt_is_causal=True)))


@torch.no_grad()
def beam_search(step: Callable[[torch.Tensor], torch.Tensor], batch_size: int, bos_id: int, eos_id: int,
                max_length: int, beam_size: int = 1, device: torch.device | str = "cpu") -> list[list[int]]:
    """The highest log-probability sequence per sample among `beam_size` beams (1: greedy).

    `step(prefixes)` maps (batch_size * beam_size) x t prefixes (sample-major, starting with
    bos) to next-token log-probabilities of the same rows x V. Returns ids without bos/eos.
    """
    k = beam_size
    seqs = torch.full((batch_size * k, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one until they diverge
    finished = torch.zeros(batch_size * k, dtype=torch.bool, device=device)
    for _ in range(max_length):
        logp = step(seqs).float()                                        # Bk x V
        vocab = logp.shape[-1]
        # A finished beam can only be extended by eos, at no cost, so it keeps its score.
        done_row = torch.full((vocab,), float("-inf"), device=device)
        done_row[eos_id] = 0.0
        logp = torch.where(finished[:, None], done_row, logp)
        top, index = (scores.view(-1, 1) + logp).view(batch_size, k * vocab).topk(k, dim=1)
        rows = (torch.arange(batch_size, device=device)[:, None] * k + index // vocab).view(-1)
        token = (index % vocab).view(-1, 1)
        seqs = torch.cat([seqs[rows], token], dim=1)
        finished = finished[rows] | (token.view(-1) == eos_id)
        scores = top
        if bool(finished.all()):
            break
    best = seqs.view(batch_size, k, -1)[torch.arange(batch_size, device=device), scores.argmax(1)]
    out = []
    for row in best[:, 1:].tolist():
        out.append(row[: row.index(eos_id)] if eos_id in row else row)
    return out


@dataclass
class CaptionExamples:
    """Every image of an evaluation: its generated caption next to the raw references it was
    scored against, as `<task>_examples.json`, so the split can be rescored with any tool
    (coco-caption's own included)."""

    rows: list[dict[str, Any]]
    """{"image": key, "generated": text, "references": [text, ...]} per image."""
    task: str

    def write(self, out_dir: Path) -> Path:
        path = out_dir / f"{self.task}_examples.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.rows, indent=2) + "\n", encoding="utf-8")
        return path


class CaptioningTask(Task):
    """Teacher-forced cross-entropy; coco-caption's BLEU-1..4, ROUGE-L and CIDEr-D of decoded captions."""

    kind = "captioning"
    monitor = "cider_d"
    monitor_mode = "max"
    input_modalities = ("image",)
    """The text is the target, so `mmtrain eval ablate=true` blanks only the image."""

    def __init__(self, dim: int = 256, depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.1, label_smoothing: float = 0.0, beam_size: int = 3,
                 max_length: int = 64, max_decode_length: int | None = None,
                 name: str = "captioning") -> None:
        self.decoder_options = dict(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)
        self.label_smoothing = label_smoothing
        self.beam_size = beam_size
        self.max_length = max_length
        """Decoder positions: [BOS] plus the longest caption it trains on or generates."""
        self.max_decode_length = max_decode_length
        self.name = name

    def attach(self, model: MultimodalModel, info: DataInfo) -> None:
        dim, heads = self.decoder_options["dim"], self.decoder_options["heads"]
        if dim % heads:
            raise ConfigError(f"{self.name} task: dim={dim} must be a multiple of heads={heads}")
        if self.beam_size < 1:
            raise ConfigError(f"{self.name} task: beam_size={self.beam_size} must be >= 1 (1 = greedy)")
        tok = info.tokenizer
        if tok is not None and tok.max_length + 1 > self.max_length:
            raise ConfigError(f"{self.name} task: max_length={self.max_length} cannot hold [BOS] + the data's "
                              f"captions of up to {tok.max_length} tokens: set it to {tok.max_length + 1} or more")
        # No caption needs to be longer than the longest the data's tokenizer keeps.
        self.decode_length = self.max_decode_length or (tok.max_length if tok is not None else self.max_length - 1)
        if self.decode_length > self.max_length - 1:
            raise ConfigError(f"{self.name} task: max_decode_length={self.decode_length} needs "
                              f"max_length >= {self.decode_length + 1} (it is {self.max_length})")
        self.tokenizer = tok
        self.references = info.references
        self.pad_id = info.pad_id
        # Without a tokenizer (model building only) the ids are the fixed special-token ids.
        self.bos_id = tok.bos_id if tok is not None else SPECIALS.index(BOS)
        self.eos_id = tok.eos_id if tok is not None else SPECIALS.index(EOS)
        self.wrapped = tok is not None and tok.wraps
        model.heads[self.name] = CaptionDecoder(info.vocab_size, model.image_encoder.out_dim, self.max_length,
                                                pad_id=info.pad_id, **self.decoder_options)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else " ".join(map(str, ids))

    def training_step(self, model: MultimodalModel, batch: Batch) -> dict[str, torch.Tensor]:
        decoder = model.heads[self.name]
        memory = decoder.memory(model.encode_image(batch["image"]).tokens)
        inputs, target = self._teacher_forcing(batch["text"], batch["text_lengths"])
        logits = decoder(inputs, memory)                                  # B x (T+1) x V
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE,
                               label_smoothing=self.label_smoothing)
        return {"loss": loss}

    def _teacher_forcing(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids B x T -> inputs [BOS] ids and targets ids [EOS], both B x (T+1), IGNORE after
        each caption's [EOS]. A tokenizer that wraps its texts in bos ... eos itself (a
        pretrained one) gets nothing added: inputs ids[:-1], targets ids[1:], B x (T-1).
        Targets mark their end with IGNORE, not pad: some tokenizers pad with their eos id."""
        b = ids.shape[0]
        if self.wrapped:
            inputs, target, ends = ids[:, :-1], ids[:, 1:].clone(), lengths - 1
        else:
            inputs = torch.cat([ids.new_full((b, 1), self.bos_id), ids], dim=1)
            target = torch.cat([ids, ids.new_full((b, 1), self.pad_id)], dim=1)
            target[torch.arange(b, device=ids.device), lengths] = self.eos_id
            ends = lengths + 1
        positions = torch.arange(target.shape[1], device=ids.device)
        return inputs, target.masked_fill(positions[None, :] >= ends[:, None], IGNORE)

    def generate(self, model: MultimodalModel, images: torch.Tensor, beam_size: int | None = None) -> list[list[int]]:
        """Caption ids for uint8 images B x C x H x W (beam_size 1: greedy)."""
        k = beam_size or self.beam_size
        decoder = model.heads[self.name]
        memory = decoder.memory(model.encode_image(images).tokens).repeat_interleave(k, dim=0)

        def step(prefix: torch.Tensor) -> torch.Tensor:
            return F.log_softmax(decoder(prefix, memory)[:, -1].float(), dim=-1)

        return beam_search(step, images.shape[0], self.bos_id, self.eos_id, self.decode_length, k,
                           device=images.device)

    @torch.no_grad()
    def evaluate(self, model: MultimodalModel, batches: Iterable[Batch]) -> Evaluation:
        """Token-level loss; caption scores with one generated caption per distinct image.

        References are the data's raw captions of each image (`DataInfo.references`); a set
        that has none (in-memory captions without image ids, such as the synthetic set, whose
        vocabulary holds every caption word) is scored against its own decoded captions.
        """
        decoder = model.heads[self.name]
        loss, tokens = 0.0, 0
        generated: dict[int, str] = {}              # image key -> caption text
        decoded_refs: dict[int, list[str]] = {}
        offset = 0
        for batch in batches:
            ids, lengths = batch["text"], batch["text_lengths"]
            inputs, target = self._teacher_forcing(ids, lengths)
            logits = decoder(inputs, decoder.memory(model.encode_image(batch["image"]).tokens))
            loss = loss + F.cross_entropy(logits.float().flatten(0, 1), target.flatten(),
                                          ignore_index=IGNORE, reduction="sum")
            tokens += int((target != IGNORE).sum())
            keys = batch["image_id"].tolist() if "image_id" in batch else \
                list(range(offset, offset + ids.shape[0]))
            offset += ids.shape[0]
            raw = "image_id" in batch and all(k in self.references for k in keys)
            if not raw:
                for key, row, n in zip(keys, ids.tolist(), lengths.tolist()):
                    decoded_refs.setdefault(key, []).append(self.decode(row[:n]))
            new, seen = [], set(generated)
            for i, key in enumerate(keys):  # decode each image once, however many captions it has
                if key not in seen:
                    seen.add(key)
                    new.append(i)
            if new:
                index = torch.tensor(new, device=batch["image"].device)
                for i, out in zip(new, self.generate(model, batch["image"].index_select(0, index))):
                    generated[keys[i]] = self.decode(out)
        references = {k: decoded_refs[k] if k in decoded_refs else self.references[k] for k in generated}
        examples = [{"image": k, "generated": generated[k], "references": references[k]} for k in generated]
        metrics = {"loss": float(loss / max(1, tokens)), **caption_scores(generated, references)}
        return Evaluation(metrics, [CaptionExamples(examples, self.name)] if examples else [])
