"""CLIP-style contrastive alignment: symmetric InfoNCE with a learnable temperature."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mmtrain.data import DataInfo


class ContrastiveHead(nn.Module):
    """Linear projections of both modalities into one space, plus the log logit scale."""

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int, init_temperature: float) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))


class ContrastiveTask:
    """Pull each image towards its own caption and away from the batch's other captions."""

    monitor_mode = "max"

    def __init__(self, embed_dim: int = 128, init_temperature: float = 0.07,
                 max_logit_scale: float = 100.0, recall_at: tuple[int, ...] = (1, 5, 10),
                 name: str = "contrastive") -> None:
        self.embed_dim = embed_dim
        self.init_temperature = init_temperature
        # Clamped as in CLIP: an unbounded scale makes the loss spike in half precision.
        self.max_log_scale = math.log(max_logit_scale)
        self.recall_at = tuple(recall_at)
        self.name = name
        self.monitor = "recall_mean"

    def attach(self, model: Any, info: DataInfo) -> None:
        model.heads[self.name] = ContrastiveHead(model.image_encoder.out_dim, model.text_encoder.out_dim,
                                                 self.embed_dim, self.init_temperature)

    def embed(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> L2-normalized image and text embeddings, B x embed_dim each, in fp32."""
        head = model.heads[self.name]
        image = head.image_proj(model.encode_image(batch["image"]).pooled)
        text = head.text_proj(model.encode_text(batch["text"], batch["text_lengths"]).pooled)
        return F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)

    def logit_scale(self, model: Any) -> torch.Tensor:
        return model.heads[self.name].logit_scale.clamp(max=self.max_log_scale).exp()

    def training_step(self, model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image, text = self.embed(model, batch)
        scale = self.logit_scale(model)
        # Computed in fp32 (embeddings are cast above): softmax over B logits in half
        # precision loses the small differences this loss lives on.
        logits = scale * image @ text.t()                       # B x B
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        return {"loss": loss, "logit_scale": scale.detach()}

    @torch.no_grad()
    def evaluate(self, model: Any, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        images, texts = [], []
        for batch in batches:
            image, text = self.embed(model, batch)
            images.append(image)
            texts.append(text)
        image, text = torch.cat(images), torch.cat(texts)
        scale = self.logit_scale(model)
        logits = scale * image @ text.t()                        # N x N, N = split size
        target = torch.arange(logits.shape[0], device=logits.device)
        metrics = {"loss": float(0.5 * (F.cross_entropy(logits, target)
                                        + F.cross_entropy(logits.t(), target)))}
        # Rank of the true partner in each row: how many candidates score strictly higher.
        true = logits.diagonal()
        i2t_rank = (logits > true[:, None]).sum(1)
        t2i_rank = (logits.t() > true[:, None]).sum(1)
        recalls = []
        for k in self.recall_at:
            if k > logits.shape[0]:
                continue
            metrics[f"i2t_r{k}"] = float((i2t_rank < k).float().mean())
            metrics[f"t2i_r{k}"] = float((t2i_rank < k).float().mean())
            recalls += [metrics[f"i2t_r{k}"], metrics[f"t2i_r{k}"]]
        metrics["recall_mean"] = sum(recalls) / max(1, len(recalls))
        metrics["temperature"] = float(1.0 / scale)
        return metrics
