"""CLIP-style contrastive alignment: symmetric InfoNCE with a learnable temperature.

Under DDP the loss spans the global batch: features from every rank are gathered (with
`all_gather_with_grad`, gradients flowing to the local slice) and every rank computes the
same N x N loss. Retrieval is evaluated the standard way for several captions per image.

With gradient accumulation (`trainer.contrastive_accumulation=cache`) the negatives span
the whole accumulated batch, the GradCache trick (open_clip's `--accum-freq`): see
`ContrastiveTask.cached_backward`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ContextManager, Iterable

import torch
import torch.distributed
import torch.nn.functional as F
from torch import nn

from mmtrain.data import DataInfo
from mmtrain.distributed import all_gather_with_grad, world_size
from mmtrain.models.model import MultimodalModel
from mmtrain.tasks import Batch, Evaluation, Task


class ContrastiveHead(nn.Module):
    """Linear projections of both modalities into one space, plus the log logit scale; towers
    pretrained together into one space (`joint_space`, open_clip's) keep it and its scale."""

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int, init_temperature: float,
                 joint_space: dict[str, Any] | None = None) -> None:
        super().__init__()
        if joint_space is not None:
            self.image_proj, self.text_proj = nn.Identity(), nn.Identity()
            self.logit_scale = nn.Parameter(torch.tensor(float(joint_space["log_logit_scale"])))
            return
        self.image_proj = nn.Linear(image_dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))


def joint_space(model: Any) -> dict[str, Any] | None:
    """The space both towers already embed into, when they come from one pretrained model."""
    space = model.image_encoder.joint_space
    return space if space is not None and space == model.text_encoder.joint_space else None


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over N matched pairs (row i of each is a pair), in fp32 even under
    autocast: a softmax over N logits in half precision loses the small differences this loss
    lives on (autocast would run the matmul in bf16/fp16 whatever its inputs' dtype)."""
    with torch.autocast(image.device.type, enabled=False):
        logits = scale.float() * image.float() @ text.float().t()      # N x N
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """`x` unchanged in the forward pass; its gradient multiplied by `factor` in the backward."""
    return x * factor - x.detach() * (factor - 1.0)


@torch.no_grad()
def retrieval_ranks(image: torch.Tensor, text: torch.Tensor, text_image: torch.Tensor,
                    chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of the best true match for each image (Ni) and each text (Nt); 0 = ranked first.

    `text_image[j]` is the index of text j's image. An image's true matches are all its texts,
    so image->text counts how many texts outscore the best of them; text->image counts how many
    images outscore the text's own. Similarities are computed `chunk_size` rows at a time, so
    memory holds chunk_size x max(Ni, Nt) scores, never Ni x Nt.
    """
    with torch.autocast(image.device.type, enabled=False):  # ranks from fp32 scores: no bf16 ties
        return _ranks(image.float(), text.float(), text_image, chunk_size)


def _ranks(image: torch.Tensor, text: torch.Tensor, text_image: torch.Tensor,
           chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    n_image, n_text = image.shape[0], text.shape[0]
    t2i = torch.empty(n_text, dtype=torch.long, device=text.device)
    for s in range(0, n_text, chunk_size):
        sims = text[s : s + chunk_size] @ image.t()                      # c x Ni
        own = sims.gather(1, text_image[s : s + chunk_size, None])
        t2i[s : s + chunk_size] = (sims > own).sum(1)
    i2t = torch.empty(n_image, dtype=torch.long, device=image.device)
    for s in range(0, n_image, chunk_size):
        sims = image[s : s + chunk_size] @ text.t()                      # c x Nt
        rows = torch.arange(s, s + sims.shape[0], device=image.device)
        mine = text_image[None, :] == rows[:, None]
        best = sims.masked_fill(~mine, float("-inf")).amax(1, keepdim=True)
        i2t[s : s + chunk_size] = (sims > best).sum(1)
    return i2t, t2i


def dedupe_images(image: torch.Tensor, image_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per distinct `image_id` (its first occurrence) and, for every sample, its row."""
    unique, text_image = torch.unique(image_id, return_inverse=True)
    order = torch.arange(image_id.shape[0], device=image_id.device)
    first = torch.full((unique.shape[0],), image_id.shape[0], dtype=torch.long, device=image_id.device)
    first.scatter_reduce_(0, text_image, order, reduce="amin")
    return image[first], text_image


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class ContrastiveTask(Task):
    """Pull each image towards its own caption and away from the batch's other captions."""

    kind = "contrastive"
    monitor_mode = "max"
    supports_gradient_cache = True

    def __init__(self, embed_dim: int = 128, init_temperature: float = 0.07,
                 max_logit_scale: float = 100.0, recall_at: tuple[int, ...] = (1, 5, 10),
                 eval_chunk_size: int = 1024, name: str = "contrastive") -> None:
        self.embed_dim = embed_dim
        self.init_temperature = init_temperature
        # Clamped as in CLIP: an unbounded scale makes the loss spike in half precision.
        self.max_log_scale = math.log(max_logit_scale)
        self.recall_at = tuple(recall_at)
        self.eval_chunk_size = eval_chunk_size
        self.name = name
        self.monitor = "recall_mean"

    def attach(self, model: MultimodalModel, info: DataInfo) -> None:
        model.heads[self.name] = ContrastiveHead(model.image_encoder.out_dim, model.text_encoder.out_dim,
                                                 self.embed_dim, self.init_temperature, joint_space(model))

    def embed(self, model: MultimodalModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> L2-normalized image and text embeddings, B x embed_dim each, in fp32."""
        return (self.embed_image(model, batch["image"]),
                self.embed_text(model, batch["text"], batch["text_lengths"]))

    def embed_image(self, model: MultimodalModel, image: torch.Tensor) -> torch.Tensor:
        """uint8 B x C x H x W -> L2-normalized B x embed_dim, in fp32 (also predict/embed/export)."""
        image = model.heads[self.name].image_proj(model.encode_image(image).pooled)
        return F.normalize(image.float(), dim=-1)

    def embed_text(self, model: MultimodalModel, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """B x T token ids -> L2-normalized B x embed_dim, in fp32 (also predict/embed/export)."""
        text = model.heads[self.name].text_proj(model.encode_text(ids, lengths).pooled)
        return F.normalize(text.float(), dim=-1)

    def logit_scale(self, model: MultimodalModel) -> torch.Tensor:
        return model.heads[self.name].logit_scale.clamp(max=self.max_log_scale).exp()

    def training_step(self, model: MultimodalModel, batch: Batch) -> dict[str, torch.Tensor]:
        image, text = self.embed(model, batch)
        n_ranks = world_size()
        if n_ranks > 1:
            # Every rank computes the same global-batch loss but back-propagates only into its
            # own features; DDP then averages, which would leave the encoders 1/n_ranks of the
            # gradient (the temperature, seen whole on every rank, gets all of it). Scaling
            # the local features' gradient by n_ranks makes both equal to a 1-process run.
            image, text = _scale_grad(image, n_ranks), _scale_grad(text, n_ranks)
        scale = self.logit_scale(model)
        loss = clip_loss(all_gather_with_grad(image), all_gather_with_grad(text), scale)
        return {"loss": loss, "logit_scale": scale.detach()}

    def cached_backward(self, model: MultimodalModel, batches: list[Batch],
                        autocast: Callable[[], ContextManager],
                        scale_loss: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accumulate into `.grad` the gradient of the InfoNCE loss over all micro-`batches` (and
        all ranks) together; `scale_loss` is the GradScaler's `scale`. One optimizer step over N
        micro-batches of B on each of W ranks:

        1. embeds every micro-batch without a graph (the memory of one micro-batch at a time),
        2. computes the loss over all N*B*W embeddings, whose gradient w.r.t. each embedding is
           exact and cheap (the embeddings are leaves),
        3. re-embeds each micro-batch with a graph, under the RNG state of step 1 (same
           dropout), and back-propagates the cached embedding gradients through the encoders.

        The gradient equals the one of a single batch of N*B*W, for one extra forward pass; a
        BatchNorm in train mode sees micro-batch statistics and updates its running statistics
        twice. The model must not be wrapped in DDP (its hooks expect one backward per
        forward): the gradients are summed over ranks here. -> the detached loss and scale.
        """
        device = batches[0]["image"].device
        states, images, texts = [], [], []
        with torch.no_grad():
            for batch in batches:
                states.append(_rng_state(device))
                with autocast():
                    image, text = self.embed(model, batch)
                images.append(image)
                texts.append(text)
        image = torch.cat(images).requires_grad_()                  # N*B x D, leaves
        text = torch.cat(texts).requires_grad_()
        scale = self.logit_scale(model)
        loss = clip_loss(all_gather_with_grad(image), all_gather_with_grad(text), scale)  # over W*N*B
        scale_loss(loss).backward()
        n_ranks = world_size()
        if n_ranks > 1:
            # Every rank computed the whole loss, so the logit scale (the only parameter that
            # step 2 reaches) already holds the full gradient: pre-divide it, because the
            # sum over ranks below is what the encoders' partial gradients need.
            for p in model.parameters():
                if p.grad is not None:
                    p.grad /= n_ranks
        end_state = _rng_state(device)
        offset = 0
        for batch, state in zip(batches, states):
            _set_rng_state(device, state)
            n = batch["image"].shape[0]
            with autocast():
                part_image, part_text = self.embed(model, batch)
            torch.autograd.backward([part_image, part_text],
                                    [image.grad[offset:offset + n], text.grad[offset:offset + n]])
            offset += n
        _set_rng_state(device, end_state)
        if n_ranks > 1:
            for p in model.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
        return {"loss": loss.detach(), "logit_scale": scale.detach()}

    @torch.no_grad()
    def evaluate(self, model: MultimodalModel, batches: Iterable[Batch]) -> Evaluation:
        """Recall@K both ways and their mean. With `image_id` in the batches (several captions
        per image, one sample per caption) images are deduplicated by id; the loss is the
        training loss averaged over evaluation batches."""
        images, texts, ids, loss, count = [], [], [], 0.0, 0
        scale = self.logit_scale(model)
        for batch in batches:
            image, text = self.embed(model, batch)
            loss = loss + clip_loss(image, text, scale) * image.shape[0]
            count += image.shape[0]
            images.append(image)
            texts.append(text)
            if "image_id" in batch:
                ids.append(batch["image_id"])
        image, text = torch.cat(images), torch.cat(texts)
        if ids:
            image, text_image = dedupe_images(image, torch.cat(ids))
        else:
            text_image = torch.arange(text.shape[0], device=text.device)
        i2t, t2i = retrieval_ranks(image, text, text_image, self.eval_chunk_size)
        metrics = {"loss": float(loss / count)}
        recalls = []
        for k in self.recall_at:
            if k > image.shape[0]:
                continue  # every image would be found: no information
            metrics[f"i2t_r{k}"] = float((i2t < k).float().mean())
            metrics[f"t2i_r{k}"] = float((t2i < k).float().mean())
            recalls += [metrics[f"i2t_r{k}"], metrics[f"t2i_r{k}"]]
        metrics["recall_mean"] = sum(recalls) / max(1, len(recalls))
        metrics["temperature"] = float(1.0 / scale)
        return Evaluation(metrics)
