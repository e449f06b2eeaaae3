"""Gradient accumulation for contrastive losses with negatives across the whole accumulated
batch (the GradCache trick, open_clip's `--accum-freq`).

Plain accumulation computes the InfoNCE loss inside each micro-batch, so every sample sees
only B-1 negatives. Here one optimizer step over N micro-batches of B (on each of W ranks):

1. embeds every micro-batch without a graph (the memory of one micro-batch at a time),
2. computes the loss over all N*B*W embeddings, whose gradient w.r.t. each embedding is
   exact and cheap (the embeddings are leaves),
3. re-embeds each micro-batch with a graph, under the RNG state of step 1 (same dropout),
   and back-propagates the cached embedding gradients through the encoders.

The gradient equals the one of a single batch of N*B*W, for one extra forward pass; a
BatchNorm in train mode sees micro-batch statistics and updates its running statistics
twice. The task needs `embed(model, batch) -> (image, text)` (B x D each, L2-normalized)
and `logit_scale(model)`, as `ContrastiveTask` has.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmtrain.distributed import all_gather_with_grad, is_distributed, world_size


def supports_cache(task: Any) -> bool:
    return callable(getattr(task, "embed", None)) and callable(getattr(task, "logit_scale", None))


def cached_contrastive_backward(model: torch.nn.Module, task: Any, batches: list[dict[str, torch.Tensor]],
                                autocast: Callable[[], ContextManager],
                                scale_loss: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accumulate into `.grad` the gradient of the InfoNCE loss over all `batches` (and all
    ranks); `scale_loss` is the GradScaler's `scale`. Returns the detached loss and scale."""
    device = batches[0]["image"].device
    states, images, texts = [], [], []
    with torch.no_grad():
        for batch in batches:
            states.append(_rng_state(device))
            with autocast():
                image, text = task.embed(model, batch)
            images.append(image.float())
            texts.append(text.float())
    image = torch.cat(images).requires_grad_()                  # N*B x D, leaves
    text = torch.cat(texts).requires_grad_()
    scale = task.logit_scale(model)
    all_image, all_text = all_gather_with_grad(image), all_gather_with_grad(text)   # W*N*B x D
    logits = scale * all_image @ all_text.t()
    target = torch.arange(logits.shape[0], device=device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    scale_loss(loss).backward()
    if is_distributed():
        # Every rank computed the whole loss, so the logit scale (the only parameter that
        # step 2 reaches) already holds the full gradient: pre-divide it, because the
        # sum over ranks below is what the encoders' partial gradients need.
        for p in model.parameters():
            if p.grad is not None:
                p.grad /= world_size()
    end_state = _rng_state(device)
    offset = 0
    for batch, state in zip(batches, states):
        _set_rng_state(device, state)
        n = batch["image"].shape[0]
        with autocast():
            part_image, part_text = task.embed(model, batch)
        torch.autograd.backward([part_image.float(), part_text.float()],
                                [image.grad[offset:offset + n], text.grad[offset:offset + n]])
        offset += n
    _set_rng_state(device, end_state)
    if is_distributed():
        # The model is not wrapped in DDP on this path (its hooks expect one backward per
        # forward): sum the gradients by hand, one all_reduce per parameter that has one.
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
    return {"loss": loss.detach(), "logit_scale": scale.detach()}


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
