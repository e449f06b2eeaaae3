"""The synthetic set is deterministic, split cleanly, and needs both modalities."""

from __future__ import annotations

import pytest
import torch

from mmtrain.data.batch import collate
from mmtrain.data.loader import make_loader
from mmtrain.data.synthetic import SHAPES, build_synthetic, generate
from mmtrain.models.image_encoder import CNNEncoder
from mmtrain.models.model import MultimodalModel, blank_modalities
from mmtrain.models.fusion import ConcatFusion
from mmtrain.models.text_encoder import GRUEncoder
from mmtrain.tasks.classification import ClassificationTask


def test_same_seed_same_data_other_seed_other_data():
    a_img, a_cap, a_lab = generate(64, 32, seed=3)
    b_img, b_cap, b_lab = generate(64, 32, seed=3)
    c_img, c_cap, _ = generate(64, 32, seed=4)
    assert (a_img == b_img).all() and a_cap == b_cap and (a_lab == b_lab).all()
    assert not (a_img == c_img).all() and a_cap != c_cap


def test_captions_never_name_the_shape_of_the_referred_object():
    _, captions, labels = generate(300, 32, seed=0)
    for caption, label in zip(captions, labels):
        referred = caption.split(" and ")[0].split(" , ")[0].split(" beside ")[0]
        assert SHAPES[label] not in referred.split(), caption


def test_tokenizer_is_fitted_on_training_captions_only():
    bundle = build_synthetic(n_train=50, n_val=20, n_test=20, seed=1)
    assert bundle.tokenizer.vocab_size < 100
    batch = collate(bundle.test.__getitems__(list(range(8))))
    assert batch["text"].shape[0] == 8 and batch["text_lengths"].max() == batch["text"].shape[1]


def _train_accuracy(blank: tuple[str, ...], epochs: int = 4) -> float:
    torch.manual_seed(0)
    bundle = build_synthetic(n_train=3000, n_val=10, n_test=600, seed=0)
    info = bundle.info
    model = MultimodalModel(CNNEncoder(3, 32, width=16, dim=64), GRUEncoder(info.vocab_size, hidden_dim=64),
                            ConcatFusion(64, 128, dim=128), info.image_mean, info.image_std)
    task = ClassificationTask(hidden_dim=128, dropout=0.0)
    task.attach(model, info)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = make_loader(bundle.train, 100, train=True)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            loss = task.training_step(model, blank_modalities(batch, blank, model.image_mean))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test = make_loader(bundle.test, 300, train=False)
    with torch.no_grad():
        return task.evaluate(model, (blank_modalities(b, blank, model.image_mean) for b in test)).metrics["accuracy"]


@pytest.mark.slow
def test_one_modality_alone_stays_below_the_datas_ceilings():
    # Ceilings of the data: image alone 2/3 (which object is meant is in the text),
    # text alone 1/3 (the referred shape is never named). That fusing both beats them is the
    # default recipe's figure (scripts/bench_default_run.py: 0.946): a classifier trained from
    # scratch here, without the recipe's contrastive pretraining, learns the referring task
    # only sometimes within a test's budget (0.59-0.79 over 4-16 epochs on torch 2.14, on
    # the earlier main too), so asserting it here failed correct code.
    image_only = _train_accuracy(("text",))
    text_only = _train_accuracy(("image",))
    assert 0.5 < image_only < 0.75, image_only
    assert 0.25 < text_only < 0.45, text_only


def test_bpe_vocabularies_decode_back_to_words():
    from mmtrain.data.tokenizer import fit_tokenizer

    texts = ["an unbelievable red circle", "a red square", "the blue circle is unbelievable"] * 5
    tokenizer = fit_tokenizer(texts, kind="bpe", vocab_size=30)
    ids, lengths = tokenizer.encode(["unbelievable red circle"])
    assert lengths[0] > 3  # really split into subwords
    assert tokenizer.decode(ids[0, : lengths[0]].tolist()) == "unbelievable red circle"


def test_a_misspelled_tokenizer_option_names_the_valid_ones():
    import pytest

    from mmtrain.data.tokenizer import fit_tokenizer
    from mmtrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tokenizer_options.kindd: no such option \(valid: kind, "):
        fit_tokenizer(["a red square"], kindd="word")


def test_a_blanked_image_reaches_the_encoder_as_zeros():
    from mmtrain.models import EncoderOutput

    class Capture(torch.nn.Module):
        def forward(self, x):
            self.seen = x
            return EncoderOutput(x.flatten(1), x.flatten(2).transpose(1, 2))

    bundle = build_synthetic(n_train=20, n_val=4, n_test=4)
    model = MultimodalModel(Capture(), GRUEncoder(bundle.info.vocab_size), ConcatFusion(3, 256),
                            bundle.info.image_mean, bundle.info.image_std)
    batch = blank_modalities(collate(bundle.test.__getitems__([0, 1])), ["image"], model.image_mean)
    model.encode_image(batch["image"])
    assert model.image_encoder.seen.abs().max() < 0.01
