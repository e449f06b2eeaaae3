"""Fusions with plain tensors: shapes, masks respected, late fusion's combined logits."""

from __future__ import annotations

import pytest
import torch

from mmtrain.errors import ConfigError
from mmtrain.models import fusion as fusion_lib


FUSIONS = [fusion_lib.ConcatFusion, fusion_lib.SumFusion, fusion_lib.ProductFusion, fusion_lib.GatedFusion,
           fusion_lib.FiLMFusion, fusion_lib.AttentionFusion, fusion_lib.BilinearFusion, fusion_lib.LateFusion]


@pytest.mark.parametrize("cls", FUSIONS, ids=lambda c: c.__name__)
def test_every_fusion_works_on_plain_tensors_of_different_widths(cls):
    image, text = torch.randn(4, 24), torch.randn(4, 12)
    fusion = cls(image_dim=24, text_dim=12, dim=8)
    assert fusion(image, text).shape == (4, 8)
    tokens = fusion(image, text, image_tokens=torch.randn(4, 9, 24), text_tokens=torch.randn(4, 5, 12),
                    text_mask=torch.arange(5)[None] < torch.tensor([5, 3, 1, 2])[:, None])
    assert tokens.shape == (4, 8) and fusion.out_dim == 8
    tokens.sum().backward()


def test_attention_fusion_ignores_what_sits_under_the_text_padding():
    torch.manual_seed(0)
    fusion = fusion_lib.AttentionFusion(6, 5, dim=8, heads=2).eval()
    image_tokens, text_tokens = torch.randn(2, 4, 6), torch.randn(2, 7, 5)
    mask = torch.arange(7)[None] < torch.tensor([3, 7])[:, None]
    out = fusion(image_tokens.mean(1), text_tokens.mean(1), image_tokens, text_tokens, mask)
    changed = text_tokens.clone()
    changed[0, 3:] = 100.0  # padding of sample 0
    again = fusion(image_tokens.mean(1), text_tokens.mean(1), image_tokens, changed, mask)
    assert torch.allclose(out, again, atol=1e-5)
    changed[0, 1] = 100.0  # a real token: the output must move
    assert not torch.allclose(out[0], fusion(image_tokens.mean(1), text_tokens.mean(1), image_tokens,
                                             changed, mask)[0], atol=1e-3)


def test_film_conditions_the_image_on_the_text_once_trained():
    fusion = fusion_lib.FiLMFusion(6, 5, dim=8)
    image = torch.randn(3, 6)
    # Zero-initialised modulation: the identity at first, so training starts from the image alone.
    assert torch.allclose(fusion(image, torch.randn(3, 5)), fusion(image, torch.randn(3, 5)))
    torch.nn.init.normal_(fusion.film.weight)
    assert not torch.allclose(fusion(image, torch.randn(3, 5)), fusion(image, torch.randn(3, 5)))


def test_late_fusion_keeps_each_modality_to_its_own_tower():
    fusion = fusion_lib.LateFusion(6, 5, dim=8)
    image, text = torch.randn(4, 6), torch.randn(4, 5)
    image_part, text_part = fusion.per_modality(image, text)
    assert torch.allclose(fusion(image, text), 0.5 * (image_part + text_part))
    assert torch.equal(fusion.per_modality(image, torch.randn(4, 5))[0], image_part)


def test_attention_heads_must_divide_the_width():
    with pytest.raises(ConfigError, match="dim=30 must be a multiple of heads=4"):
        fusion_lib.AttentionFusion(8, 8, dim=30, heads=4)
