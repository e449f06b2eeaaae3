"""Contrastive task: retrieval recall against hand-computed values (one and several captions
per image), chunking that changes nothing, and DDP gradients equal to a 1-process run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmtrain.models import EncoderOutput
from mmtrain.tasks import contrastive
from mmtrain.tasks.contrastive import ContrastiveHead, ContrastiveTask, clip_loss, retrieval_ranks

# Four (image, caption) samples; samples 0 and 1 are two captions of the same image A.
IMAGES = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])     # A, A, B, C
CAPTIONS = torch.tensor([[0, 1.0, 0], [1.0, 0, 0], [0.6, 0.8, 0], [0.8, 0, 0.6]])
IMAGE_IDS = torch.tensor([7, 7, 3, 9])


class FeatureModel(nn.Module):
    """A stand-in whose 'encoders' return the batch's features and whose head is the identity."""

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({"contrastive": ContrastiveHead(dim, dim, dim, 0.07)})
        with torch.no_grad():
            self.heads["contrastive"].image_proj.weight.copy_(torch.eye(dim))
            self.heads["contrastive"].text_proj.weight.copy_(torch.eye(dim))

    def encode_image(self, x: torch.Tensor) -> EncoderOutput:
        return EncoderOutput(pooled=x, tokens=x[:, None])

    def encode_text(self, x: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        return EncoderOutput(pooled=x, tokens=x[:, None])


def _batches(with_ids: bool):
    for part in (slice(0, 3), slice(3, 4)):  # metrics must span batches
        batch = {"image": IMAGES[part], "text": CAPTIONS[part], "text_lengths": torch.ones(len(IMAGES[part]))}
        if with_ids:
            batch["image_id"] = IMAGE_IDS[part]
        yield batch


def test_recall_with_several_captions_per_image_matches_hand_computation():
    # By hand: image A's best caption (c1, sim 1) ranks first; B's only caption (c2, .8) is beaten
    # by c0 (1.0); C's (c3, .6) ranks first -> i2t R@1 = 2/3, R@2 = 1. Captions: c0's image A
    # (0) is beaten by B (1); c1 and c2 rank their image first; c3's C (.6) is beaten by A (.8)
    # -> t2i R@1 = 2/4, R@2 = 1. R@10 is left out: there are only 3 images.
    task = ContrastiveTask(embed_dim=3, recall_at=(1, 2, 10), eval_chunk_size=2)
    m = task.evaluate(FeatureModel(), _batches(with_ids=True)).metrics
    assert m["i2t_r1"] == pytest.approx(2 / 3) and m["i2t_r2"] == 1.0
    assert m["t2i_r1"] == 0.5 and m["t2i_r2"] == 1.0
    assert "i2t_r10" not in m
    assert m["recall_mean"] == pytest.approx((2 / 3 + 0.5 + 1 + 1) / 4)


def test_without_image_ids_every_sample_is_its_own_pair():
    # Now sample 0's image is a separate candidate whose only caption is c0 (sim 0): three
    # captions outrank it. i2t ranks 3, 0, 1, 0; t2i ranks 1, 0, 0, 2 (ties do not count).
    task = ContrastiveTask(embed_dim=3, recall_at=(1, 2))
    m = task.evaluate(FeatureModel(), _batches(with_ids=False)).metrics
    assert (m["i2t_r1"], m["i2t_r2"]) == (0.5, 0.75)
    assert (m["t2i_r1"], m["t2i_r2"]) == (0.5, 0.75)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunked_ranks_equal_the_full_matrix(chunk):
    torch.manual_seed(0)
    image, text = torch.randn(20, 8), torch.randn(50, 8)
    text_image = torch.randint(0, 20, (50,))
    text_image[:20] = torch.arange(20)  # every image has a caption
    sims = image @ text.t()
    own = text_image[None] == torch.arange(20)[:, None]
    best = sims.masked_fill(~own, float("-inf")).amax(1, keepdim=True)
    expected_i2t = (sims > best).sum(1)
    expected_t2i = (sims.t() > sims.t().gather(1, text_image[:, None])).sum(1)
    i2t, t2i = retrieval_ranks(image, text, text_image, chunk_size=chunk)
    assert torch.equal(i2t, expected_i2t) and torch.equal(t2i, expected_t2i)


class LinearModel(FeatureModel):
    def __init__(self) -> None:
        super().__init__(dim=4)
        self.image_encoder, self.text_encoder = nn.Linear(6, 4), nn.Linear(5, 4)

    def encode_image(self, x):
        return super().encode_image(self.image_encoder(x))

    def encode_text(self, x, lengths):
        return super().encode_text(self.text_encoder(x), lengths)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradients_under_ddp_equal_a_one_process_run_on_the_global_batch(monkeypatch):
    """Two ranks simulated in one process: each gathers the other's features without gradient
    (what all_gather_with_grad does), back-propagates, and DDP averages the gradients."""
    torch.manual_seed(0)
    model, task = LinearModel(), ContrastiveTask(embed_dim=4)
    batch = {"image": torch.randn(8, 6), "text": torch.randn(8, 5), "text_lengths": torch.ones(8)}
    task.training_step(model, batch)["loss"].backward()
    expected = _grads(model)

    shards = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    with torch.no_grad():
        features = [task.embed(model, s) for s in shards]  # (image, text) of each rank
    monkeypatch.setattr(contrastive, "world_size", lambda: 2)
    per_rank = []
    for rank in (0, 1):
        kinds = iter((0, 1))  # training_step gathers the images, then the texts

        def gather(x, rank=rank, kinds=kinds):
            kind = next(kinds)
            parts = [features[r][kind] for r in (0, 1)]
            parts[rank] = x
            return torch.cat(parts)

        monkeypatch.setattr(contrastive, "all_gather_with_grad", gather)
        model.zero_grad()
        task.training_step(model, shards[rank])["loss"].backward()
        per_rank.append(_grads(model))
    for name, grad in expected.items():
        averaged = (per_rank[0][name] + per_rank[1][name]) / 2
        assert torch.allclose(averaged, grad, atol=1e-6), name


def test_loss_is_computed_in_fp32_under_mixed_precision():
    torch.manual_seed(0)
    image = nn.functional.normalize(torch.randn(64, 16), dim=-1).bfloat16()
    text = nn.functional.normalize(image.float() + 0.3 * torch.randn(64, 16), dim=-1).bfloat16()
    scale, target = torch.tensor(14.3), torch.arange(64)
    exact = clip_loss(image.float(), text.float(), scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = clip_loss(image, text, scale)
        # What the loss would be with autocast left on: the logits rounded to bf16.
        naive = nn.functional.cross_entropy(scale * image @ text.t(), target)
    assert mixed.dtype == torch.float32 and float(mixed) == pytest.approx(float(exact), rel=1e-6)
    assert float(naive) != pytest.approx(float(exact), rel=1e-4)
