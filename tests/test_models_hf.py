"""model/text_encoder=hf: a transformers encoder and its own tokenizer, from a local folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.eval import evaluate_checkpoint
from mmtrain.train import train
from tests.helpers import assert_same_weights, run_cli
from tests.pretrained_models import pretrained_config, save_tiny_bert

SAVE_ALL = ["trainer.deterministic=true", "trainer.checkpoint.every_n_steps=1",
            "trainer.checkpoint.keep_last=99"]


def hf_overrides(folder: Path, *extra: str) -> list[str]:
    """The trainer tests' tiny run with the tiny BERT as text encoder."""
    return ["model/text_encoder=hf", f"model.text_encoder.name={folder}",
            "data.tokenizer_options.max_length=24", *extra]


def hf_config(folder: Path, *extra: str):
    return pretrained_config(*hf_overrides(folder, *extra))


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


def test_hf_encoder_holds_the_saved_weights_bit_for_bit(bert):
    from transformers import AutoModel

    from mmtrain.models.text_encoder import HFTextEncoder

    saved = AutoModel.from_pretrained(bert).state_dict()
    encoder = HFTextEncoder(str(bert), vocab_size=10)
    loaded = encoder.net.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    random_init = HFTextEncoder(str(bert), vocab_size=10, pretrained=False).net.state_dict()
    assert not torch.equal(random_init["embeddings.word_embeddings.weight"],
                           saved["embeddings.word_embeddings.weight"])


def test_the_data_is_tokenized_with_the_models_own_tokenizer(bert, tmp_path):
    from transformers import AutoTokenizer

    from mmtrain import data as data_lib
    from mmtrain.models.model import model_tokenizer

    cfg = hf_config(bert)
    tokenizer = model_tokenizer(cfg.model, cfg.data)
    data = data_lib.build(cfg.data, tokenizer=tokenizer)
    reference = AutoTokenizer.from_pretrained(bert)
    from mmtrain.data.synthetic import generate

    batch = data.train.__getitems__([0, 1, 2])
    total = cfg.data.n_train + cfg.data.n_val + cfg.data.n_test
    captions = generate(total, cfg.data.image_size, cfg.data.seed)[1][:3]
    expected = reference(captions, padding="max_length", max_length=24, truncation=True)
    assert torch.equal(batch["text"], torch.tensor(expected["input_ids"]))
    assert batch["text"][0, 0] == reference.cls_token_id
    assert data.info.vocab_size == reference.vocab_size and data.info.pad_id == reference.pad_token_id
    long = tokenizer.encode(["red " * 100])[0][0]
    assert long[-1] == reference.sep_token_id, "truncation must keep the closing [SEP]"


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_pooling_choices_follow_the_padding_mask(bert, pooling):
    from mmtrain.models.text_encoder import HFTextEncoder

    encoder = HFTextEncoder(str(bert), vocab_size=10, pooling=pooling).eval()
    ids = torch.tensor([[2, 6, 7, 3, 0, 0]])
    padded_more = torch.tensor([[2, 6, 7, 3, 0, 0, 0, 0]])
    a = encoder(ids, torch.tensor([4]))
    b = encoder(padded_more, torch.tensor([4]))
    assert torch.allclose(a.pooled, b.pooled, atol=1e-5)
    hidden = encoder.net(input_ids=ids[:, :4]).last_hidden_state
    if pooling == "cls":
        assert torch.allclose(a.pooled, hidden[:, 0], atol=1e-5)
    elif pooling == "mean":
        assert torch.allclose(a.pooled, hidden.mean(1), atol=1e-5)
    assert a.tokens.shape == (1, 6, 32) and a.mask.tolist() == [[True] * 4 + [False] * 2]


def test_checkpoint_evaluates_without_the_model_folder_and_resumes_exactly(bert, tmp_path):
    reference = tmp_path / "reference"
    train(hf_config(bert, *SAVE_ALL), reference)
    last = reference / "checkpoints" / "finetune" / "last.pt"
    ckpt = load_checkpoint(last)
    assert "[CLS]" in ckpt["tokenizer"]  # the model's vocabulary, not a fitted one

    snapshot = reference / "checkpoints" / "finetune" / "step-0000006.pt"
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints" / "finetune").mkdir(parents=True)
    shutil.copy(snapshot, resumed / "checkpoints" / "finetune" / "last.pt")
    moved = bert.with_name("moved-away")
    bert.rename(moved)
    try:
        result = evaluate_checkpoint(last, "val")
        train(hf_config(bert, *SAVE_ALL, "trainer.resume=true"), resumed)
    finally:
        moved.rename(bert)
    assert result["metrics"] == pytest.approx(ckpt["metrics"], abs=1e-6)
    assert_same_weights(load_checkpoint(resumed / "checkpoints" / "finetune" / "last.pt")["model"],
                        ckpt["model"])


@pytest.mark.parametrize("make, needle", [
    (lambda tmp: tmp / "no-such-model", "no-such-model: no such folder"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "cannot load its tokenizer"),
])
@pytest.mark.slow
def test_a_missing_or_unusable_model_folder_is_one_line_and_exit_2(tmp_path, make, needle):
    folder = make(tmp_path)
    out = run_cli(["train", "model/text_encoder=hf", f"model.text_encoder.name={folder}"], tmp_path,
                  env={"HF_HUB_OFFLINE": "1"})
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert needle in lines[0]


@pytest.mark.slow
def test_weights_of_another_architecture_are_one_line_and_exit_2(bert, tmp_path):
    from transformers import BertConfig, BertModel

    other = tmp_path / "other"
    shutil.copytree(bert, other)
    BertModel(BertConfig(vocab_size=9, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(other / "weights")
    shutil.copy(other / "weights" / "model.safetensors", other / "model.safetensors")
    out = run_cli(["train", "model/text_encoder=hf", f"model.text_encoder.name={other}"], tmp_path,
                  env={"HF_HUB_OFFLINE": "1"})
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "cannot load a transformers model from it (tensors of another shape" in lines[0]


def test_weights_missing_layers_are_refused_not_left_at_random_init(bert, tmp_path):
    from safetensors.torch import load_file, save_file

    from mmtrain.errors import CheckpointError
    from mmtrain.models.text_encoder import HFTextEncoder

    other = tmp_path / "one-layer-short"
    shutil.copytree(bert, other)
    state = load_file(other / "model.safetensors")
    save_file({k: v for k, v in state.items() if ".layer.1." not in k}, other / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"do not fit its config.json \(16 tensors missing"):
        HFTextEncoder(str(other), vocab_size=10)


def test_the_tokenized_text_cache_keeps_the_fitted_and_the_models_tokens_apart(bert, tmp_path):
    from mmtrain.data.mnist_imdb import build_mnist_imdb
    from mmtrain.data.tokenizer import pretrained_tokenizer
    from tests.data_helpers import mnist_imdb_fixture

    root = mnist_imdb_fixture(tmp_path / "data", n_train=60, n_test=20, n_reviews=20)
    options = {"max_length": 24}
    cache = tmp_path / "cache"
    fitted = build_mnist_imdb(str(root), tokenizer_options=options, cache_dir=str(cache))
    own = pretrained_tokenizer(str(bert), 24)
    first = build_mnist_imdb(str(root), tokenizer=own, cache_dir=str(cache))
    again = build_mnist_imdb(str(root), tokenizer=pretrained_tokenizer(str(bert), 24), cache_dir=str(cache))
    entries = sorted(p.name.split("-")[2] for p in cache.glob("imdb-aclimdb-tokens-*"))
    assert len(entries) == 2, entries
    assert (first.train.ids[:, 0] == own.bos_id).all()            # [CLS] opens every review
    assert not (fitted.train.ids[:, 0] == own.bos_id).all()
    assert torch.equal(again.train.ids, first.train.ids)


def test_a_hub_id_is_handed_to_transformers_own_from_pretrained(bert, monkeypatch):
    """pretrained=true resolves hub ids through transformers (its cache, HF_HUB_OFFLINE), never
    through a download of ours: the id reaches from_pretrained untouched."""
    from transformers import AutoModel, AutoTokenizer

    from mmtrain.data.tokenizer import pretrained_tokenizer
    from mmtrain.models.text_encoder import HFTextEncoder

    asked = []
    real_model, real_tokenizer = AutoModel.from_pretrained, AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoModel, "from_pretrained",
                        lambda name, **kw: asked.append(name) or real_model(bert, **kw))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained",
                        lambda name, **kw: asked.append(name) or real_tokenizer(bert, **kw))
    HFTextEncoder("sentence-transformers/all-MiniLM-L6-v2", vocab_size=10)
    HFTextEncoder.load_tokenizer("bert-base-uncased", max_length=16)
    assert asked == ["sentence-transformers/all-MiniLM-L6-v2", "bert-base-uncased"]


@pytest.mark.slow
def test_an_uncached_hub_id_offline_is_one_clear_line(tmp_path):
    from tests.helpers import run_cli

    # A fresh process: huggingface_hub reads HF_HUB_OFFLINE and HF_HOME once, at import.
    out = run_cli(["train", "model/text_encoder=hf", "model.text_encoder.name=nobody/no-such-model"],
                  tmp_path, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache")})
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "model.text_encoder.name=nobody/no-such-model: cannot load its tokenizer" in lines[0]


def test_a_checkpoints_stored_architecture_passes_only_the_encoders_own_arguments(bert):
    from mmtrain import data as data_lib
    from mmtrain.errors import CheckpointError
    from mmtrain.models.model import build_model, model_tokenizer

    cfg = hf_config(bert)
    data = data_lib.build(cfg.data, tokenizer=model_tokenizer(cfg.model, cfg.data))
    stored = build_model(cfg.model, data.info).architecture()
    assert set(stored) == {"text_encoder"} and stored["text_encoder"]["pretrained"] is False
    rebuilt = build_model(cfg.model, data.info, architecture=stored)
    assert rebuilt.text_encoder.net.config.hidden_size == 32
    with pytest.raises(CheckpointError, match="stored model.text_encoder has an argument 'command'"):
        build_model(cfg.model, data.info, architecture={"text_encoder": {"command": "rm -rf /"}})
