"""Image and text encoders: every input format the configs allow, local pretrained weights,
padding that changes nothing, and clear errors for settings that cannot work."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.vision_transformer import VisionTransformer

from mmtrain.errors import CheckpointError, ConfigError
from mmtrain.models.image_encoder import CNNEncoder, ResNetEncoder, ViTEncoder
from mmtrain.models.text_encoder import BowEncoder, GRUEncoder, LSTMEncoder, TransformerEncoder
from tests.zoo import build, compose_config


IMAGE_ENCODERS = {
    "cnn": lambda c, s: CNNEncoder(c, s, width=8, depth=2, dim=16),
    "resnet18": lambda c, s: ResNetEncoder("resnet18", c, s, small_input=True, dim=16),
    "resnet18_imagenet_stem": lambda c, s: ResNetEncoder("resnet18", c, s),
    "vit_tiny": lambda c, s: ViTEncoder(c, s, patch_size=4, dim=16, depth=1, heads=2),
}


@pytest.mark.parametrize("name,channels,size", [
    ("cnn", 1, 28), ("cnn", 3, 32), ("vit_tiny", 1, 28), ("vit_tiny", 3, 32),
    ("resnet18", 1, 28), ("resnet18_imagenet_stem", 3, 32),
])
def test_image_encoders_take_grayscale_and_rgb_at_the_data_size(name, channels, size):
    encoder = IMAGE_ENCODERS[name](channels, size)
    out = encoder(torch.randn(2, channels, size, size))
    assert out.pooled.shape == (2, encoder.out_dim)
    assert out.tokens.shape[0] == 2 and out.tokens.shape[2] == encoder.out_dim and out.tokens.shape[1] >= 1
    out.pooled.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


@pytest.mark.parametrize("image,size,tokens", [("resnet50", 32, 1), ("vit_b_16", 32, 4)])
def test_heavy_encoders_build_from_config_and_backpropagate_at_a_small_size(image, size, tokens):
    model, task, data = build(compose_config(image=image, image_size=size))
    x = torch.randint(0, 255, (2, 3, size, size), dtype=torch.uint8)
    out = model.encode_image(x)
    assert out.tokens.shape[1] == tokens
    out.pooled.square().mean().backward()
    first = next(model.image_encoder.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_resnet_loads_local_torchvision_weights_and_sums_them_for_grayscale(tmp_path):
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    rgb = ResNetEncoder("resnet18", 3, 64, pretrained=str(path)).eval()
    gray = ResNetEncoder("resnet18", 1, 64, pretrained=str(path)).eval()
    assert torch.equal(rgb.trunk[0].weight, reference.conv1.weight)
    image = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        expected = torch.flatten(reference.avgpool(torch.nn.Sequential(*list(reference.children())[:-2])(
            image.expand(-1, 3, -1, -1))), 1)
        # A grey image through the 1-channel net = the same image in RGB through the original.
        assert torch.allclose(gray(image).pooled, expected, atol=1e-4)
        assert torch.allclose(rgb(image.expand(-1, 3, -1, -1)).pooled, expected, atol=1e-4)


def test_vit_loads_weights_trained_at_another_size_by_resizing_positions(tmp_path):
    source = VisionTransformer(image_size=32, patch_size=4, num_layers=1, num_heads=2, hidden_dim=16,
                               mlp_dim=32)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    vit = ViTEncoder(3, 16, patch_size=4, dim=16, depth=1, heads=2, mlp_ratio=2.0, pretrained=str(path))
    assert vit.vit.encoder.pos_embedding.shape == (1, 1 + 16, 16)
    assert torch.equal(vit.vit.conv_proj.weight, source.conv_proj.weight)
    assert vit(torch.randn(2, 3, 16, 16)).tokens.shape == (2, 16, 16)


def test_pretrained_weights_that_do_not_exist_or_do_not_fit_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such file.*pretrained=null"):
        ResNetEncoder("resnet18", 3, 32, pretrained=str(tmp_path / "missing.pth"))
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not hold resnet50 weights: missing \d+ keys .*shape mismatches"):
        ResNetEncoder("resnet50", 3, 32, pretrained=str(path))


def test_vit_patch_size_must_divide_the_image_size():
    with pytest.raises(ConfigError, match=r"patch_size=16 does not divide the data's image_size=28.*\(e.g. 14\)"):
        ViTEncoder(1, 28, patch_size=16)


TEXT_ENCODERS = {
    "gru_bidirectional": lambda: GRUEncoder(50, embed_dim=8, hidden_dim=8, bidirectional=True),
    "gru_unidirectional": lambda: GRUEncoder(50, embed_dim=8, hidden_dim=8, bidirectional=False),
    "lstm_bidirectional": lambda: LSTMEncoder(50, embed_dim=8, hidden_dim=8, bidirectional=True),
    "lstm_unidirectional": lambda: LSTMEncoder(50, embed_dim=8, hidden_dim=8, bidirectional=False),
    "transformer": lambda: TransformerEncoder(50, dim=16, depth=2, heads=2, dropout=0.0),
    "bow": lambda: BowEncoder(50, dim=16),
}


@pytest.mark.parametrize("name", list(TEXT_ENCODERS))
def test_text_encoders_give_the_same_output_however_much_padding_follows(name):
    torch.manual_seed(0)
    encoder = TEXT_ENCODERS[name]().eval()
    lengths = torch.tensor([5, 2, 7])
    ids = torch.randint(4, 50, (3, 7)) * (torch.arange(7)[None] < lengths[:, None])
    padded = torch.cat([ids, torch.zeros(3, 6, dtype=torch.long)], dim=1)
    short, long = encoder(ids, lengths), encoder(padded, lengths)
    assert torch.allclose(short.pooled, long.pooled, atol=1e-5)
    assert short.mask.sum(1).tolist() == lengths.tolist()
    # And a sample's output does not depend on its batch-mates.
    assert torch.allclose(encoder(ids[1:2, :2], lengths[1:2]).pooled, short.pooled[1:2], atol=1e-5)
    expected = 16 if name.endswith("bidirectional") and not name.endswith("unidirectional") else \
        8 if "directional" in name else 16
    assert short.pooled.shape == (3, encoder.out_dim) and encoder.out_dim == expected


def test_transformer_text_longer_than_its_positions_names_the_fix():
    encoder = TransformerEncoder(50, dim=16, heads=2, max_length=8)
    with pytest.raises(ConfigError, match="max_length=8: raise it"):
        encoder(torch.ones(2, 12, dtype=torch.long), torch.tensor([12, 3]))


@pytest.mark.parametrize("cls", [GRUEncoder, LSTMEncoder])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, True), (2, True), (2, False)])
def test_recurrent_encoders_on_the_cpu_compute_what_packed_sequences_compute_with_the_same_gradients(
        cls, num_layers, bidirectional):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    encoder = cls(50, embed_dim=8, hidden_dim=6, num_layers=num_layers, bidirectional=bidirectional).double()
    lengths = torch.tensor([11, 3, 1, 7, 11, 9])
    ids = torch.randint(4, 50, (6, 11)) * (torch.arange(11)[None] < lengths[:, None])
    mask = (torch.arange(11)[None] < lengths[:, None])[..., None]

    def packed() -> torch.Tensor:  # what nn.GRU / nn.LSTM give on packed sequences
        seq = pack_padded_sequence(encoder.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(encoder.rnn(seq)[0], batch_first=True, total_length=11)[0]

    weights = torch.randn(6, 11, encoder.out_dim, dtype=torch.float64) * mask  # a loss on the real tokens only
    grads = []
    for tokens in (packed, lambda: encoder(ids, lengths).tokens):
        encoder.zero_grad()
        out = tokens()
        (out * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters()})
        if tokens is packed:
            expected = out.detach()
    assert torch.allclose(out.detach(), expected, atol=1e-12)
    assert out.detach()[~mask.expand_as(out)].abs().max() == 0   # padding zeroed, as unpacking does
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, atol=1e-12), name


@pytest.mark.parametrize("slot, kind", [("image_encoder", "ImageEncoder"), ("text_encoder", "TextEncoder")])
def test_a_tower_that_is_not_an_encoder_is_refused_in_one_line_naming_the_base_class(slot, kind):
    from mmtrain import data as data_lib
    from mmtrain.models.model import build_model
    from tests.helpers import compose

    # nn.Identity takes any arguments, so it builds; it answers none of what an encoder must.
    cfg = compose(["data.n_train=8", "data.n_val=4", "data.n_test=4", f"model.{slot}._target_=torch.nn.Identity"])
    with pytest.raises(ConfigError, match=f"model.{slot}: Identity is not an {kind}: subclass mmtrain.models.{kind}"):
        build_model(cfg.model, data_lib.build(cfg.data).info)


def test_a_user_encoder_subclassing_the_base_gets_every_default_ability():
    from mmtrain.models import EncoderOutput, ImageEncoder
    from mmtrain.models.model import MultimodalModel

    class Pixels(ImageEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.out_dim = 12

        def forward(self, x: torch.Tensor) -> EncoderOutput:
            return EncoderOutput(x.mean((2, 3)).repeat(1, 4), x.flatten(2).transpose(1, 2).repeat(1, 1, 4))

    tower = Pixels()
    assert tower.layer_ids() == {} and tower.architecture() is None and tower.joint_space is None
    assert tower.image_mean is None and Pixels.data_config is None
    model = MultimodalModel(tower, BowEncoder(vocab_size=10), torch.nn.Identity())
    assert model.architecture() == {}
