"""model=open_clip: a tiny open_clip model in open_clip's own formats (a local-dir: folder, a
training checkpoint) checked against open_clip's own API: the embeddings, the tokenizer, the
preprocessing, fine-tuning, offline evaluation and zero-shot classification."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.eval import evaluate_checkpoint
from mmtrain.train import train
from tests.data_helpers import mnist_imdb_fixture, run_mmtrain
from tests.pretrained_models import OPEN_CLIP_PREPROCESS, OPEN_CLIP_TINY, save_tiny_open_clip
from tests.helpers import TINY, compose

open_clip = pytest.importorskip("open_clip")

TINY_NAME = "mmtrain-tiny-clip"  # registered with open_clip for the pretrained=PATH form
TEXTS = ["a photo of a cat.", "Two DOGS, playing in the snow!!", "it's 3.14 — naïve café 東京",
         "", "word " * 100]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[Path, Path]:
    """(the local-dir folder, the training-checkpoint file) of one tiny model."""
    root = tmp_path_factory.mktemp("open_clip")
    config = root / "configs" / f"{TINY_NAME}.json"
    config.parent.mkdir()
    config.write_text(json.dumps(OPEN_CLIP_TINY))
    open_clip.add_model_config(config)
    return save_tiny_open_clip(root / "tiny-clip")


def reference(folder: Path, image_size: int | None = None):
    return open_clip.create_model(f"local-dir:{folder}", force_image_size=image_size).eval()


def open_clip_overrides(name: str, *extra: str, pretrained: str | None = None) -> list[str]:
    """The trainer tests' tiny run on the synthetic shapes with both towers from `name`."""
    return ["model=open_clip", f"model.image_encoder.name={name}", "stages=contrastive",
            "data.tokenizer_options.max_length=32",
            *([f"model.image_encoder.pretrained={pretrained}"] if pretrained else []), *extra]


def open_clip_config(name: str, *extra: str, pretrained: str | None = None):
    tiny = [o for o in TINY if not o.startswith(("model.image_encoder.", "model.text_encoder.", "stages.finetune."))]
    return compose([*tiny, *open_clip_overrides(name, *extra, pretrained=pretrained)])


def built(cfg):
    """Data (at the model's 24 px), model and the contrastive task of a composed config."""
    from mmtrain import data as data_lib
    from mmtrain.models.model import build_model, model_tokenizer
    from mmtrain.tasks.contrastive import ContrastiveTask

    cfg.data.image_size = OPEN_CLIP_TINY["vision_cfg"]["image_size"]
    data = data_lib.build(cfg.data, tokenizer=model_tokenizer(cfg.model, cfg.data))
    model = build_model(cfg.model, data.info).eval()
    task = ContrastiveTask()
    task.attach(model, data.info)
    return data, model, task


def checkpoint_data(best: Path):
    """The test split of the data a checkpoint was trained on (images and labels only)."""
    from omegaconf import OmegaConf

    from mmtrain import data as data_lib

    return data_lib.build(OmegaConf.create(load_checkpoint(best)["config"]["data"]))


@pytest.mark.parametrize("form", ["local-dir", "pretrained-file"])
def test_towers_embed_exactly_as_open_clips_own_encode_image_and_encode_text(tiny_clip, form):
    folder, trained = tiny_clip
    cfg = (open_clip_config(f"local-dir:{folder}") if form == "local-dir"
           else open_clip_config(TINY_NAME, pretrained=str(trained)))
    data, model, task = built(cfg)
    ref = (reference(folder) if form == "local-dir"
           else open_clip.create_model(TINY_NAME, pretrained=str(trained)).eval())
    preprocess = open_clip.get_model_preprocess_cfg(ref)  # the file form: open_clip's defaults
    images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    mean = torch.tensor(preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(preprocess["std"]).view(1, 3, 1, 1)
    ids, lengths = data.tokenizer.encode(TEXTS[:3])
    with torch.no_grad():
        ours_image = task.embed_image(model, images)
        ours_text = task.embed_text(model, ids, lengths)
        theirs_image = ref.encode_image((images / 255.0 - mean) / std, normalize=True)
        theirs_text = ref.encode_text(open_clip.get_tokenizer(f"local-dir:{folder}")(TEXTS[:3]), normalize=True)
    torch.testing.assert_close(ours_image, theirs_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_text, theirs_text, atol=1e-5, rtol=0)
    # The model's own space and temperature: no projections added, its logit scale kept.
    assert float(task.logit_scale(model).detach()) == pytest.approx(float(ref.logit_scale.detach().exp()))
    assert not any(p.numel() for p in model.heads["contrastive"].image_proj.parameters())


def test_the_data_is_tokenized_with_open_clips_tokenizer(tiny_clip):
    from mmtrain.models.text_encoder import OpenCLIPTextEncoder

    folder, _ = tiny_clip
    ours = OpenCLIPTextEncoder.load_tokenizer(f"local-dir:{folder}", max_length=77)
    theirs = open_clip.get_tokenizer(f"local-dir:{folder}")(TEXTS)
    ids, lengths = ours.encode(TEXTS)
    for row, n, expected in zip(ids, lengths, theirs):
        assert row[:n].tolist() == expected[expected != 0].tolist()
    assert lengths[-1] == 77  # a long text is cut, keeping its end-of-text token last
    assert ours.decode(ids[0, : lengths[0]].tolist()) == "a photo of a cat ."


def test_preprocessing_and_input_size_follow_the_model_config(tiny_clip, tmp_path):
    folder, _ = tiny_clip
    cfg = open_clip_config(f"local-dir:{folder}", "stages.pretrain.epochs=0")
    assert cfg.data.image_size == 32
    train(cfg, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints/pretrain/best.pt")
    assert ckpt["config"]["data"]["image_size"] == 24  # the model's input size, not the data's 32
    _, model, _ = built(cfg)
    assert model.image_mean.flatten().tolist() == pytest.approx(OPEN_CLIP_PREPROCESS["mean"])
    assert model.image_std.flatten().tolist() == pytest.approx(OPEN_CLIP_PREPROCESS["std"])
    assert model.image_mean.flatten().tolist() != pytest.approx(ckpt["data_info"]["image_mean"])


def test_the_data_resizes_with_the_interpolation_open_clip_gives_the_model(tiny_clip, tmp_path):
    import mmtrain.build
    from mmtrain.models.image_encoder import OpenCLIPImageEncoder

    folder, weights = tiny_clip
    bilinear = tmp_path / "bilinear-clip"
    shutil.copytree(folder, bilinear)
    config = json.loads((bilinear / "open_clip_config.json").read_text())
    config["preprocess_cfg"]["interpolation"] = "bilinear"
    (bilinear / "open_clip_config.json").write_text(json.dumps(config))
    cases = {f"local-dir:{folder}": None, f"local-dir:{bilinear}": None, TINY_NAME: str(weights)}
    for name, pretrained in cases.items():
        ours = OpenCLIPImageEncoder.data_config(name, pretrained)
        theirs = open_clip.get_model_preprocess_cfg(open_clip.create_model(name, pretrained=pretrained))
        assert ours["interpolation"] == theirs["interpolation"], name
    assert OpenCLIPImageEncoder.data_config(f"local-dir:{bilinear}")["interpolation"] == "bilinear"
    assert OpenCLIPImageEncoder.data_config(TINY_NAME, None) == {}    # random weights: nothing to follow
    cfg = open_clip_config(f"local-dir:{folder}", "data=coco_captions")
    assert cfg.data.interpolation == "bilinear"
    mmtrain.build.follow_pretrained_preprocessing(cfg)
    assert (cfg.data.interpolation, cfg.data.image_size) == ("bicubic", 24)   # open_clip's default filter


@pytest.mark.slow
def test_fine_tuning_lowers_the_loss_and_the_checkpoint_evaluates_offline(tiny_clip, tmp_path):
    folder, _ = tiny_clip
    name = f"local-dir:{folder}"
    before = tmp_path / "before"
    train(open_clip_config(name, "stages.pretrain.epochs=0"), before)
    after = tmp_path / "after"
    train(open_clip_config(name, "stages.pretrain.epochs=3", "optimizer.lr=1e-3"), after)
    start = load_checkpoint(before / "checkpoints/pretrain/best.pt")["metrics"]["loss"]
    best = after / "checkpoints/pretrain/best.pt"
    tuned = load_checkpoint(best)
    assert tuned["metrics"]["loss"] < start - 0.05
    moved = folder.with_name("moved-away")
    folder.rename(moved)
    try:  # no model folder and no hub: the checkpoint carries the architecture and the tokenizer
        out = run_mmtrain(["eval", f"ckpt={best}", "split=val"], tmp_path, env={"HF_HUB_OFFLINE": "1"})
        predicted = run_mmtrain(["predict", f"ckpt={best}", f"image={image_file(tmp_path)}",
                                 "labels=[circle,square,triangle]"], tmp_path, env={"HF_HUB_OFFLINE": "1"})
    finally:
        moved.rename(folder)
    assert out.returncode == 0, out.stderr
    result = json.loads((after / "eval" / "pretrain_best_val.json").read_text())
    assert result["metrics"] == pytest.approx(tuned["metrics"], abs=1e-6)
    assert predicted.returncode == 0, predicted.stderr
    assert "circle" in predicted.stdout


def image_file(folder: Path) -> Path:
    from PIL import Image

    path = folder / "shape.png"
    Image.new("RGB", (24, 24), (200, 30, 30)).save(path)
    return path


def hand_zero_shot(folder: Path, images: torch.Tensor, labels: torch.Tensor, names: list[str],
                   templates: list[str]) -> dict[str, float]:
    """OpenAI CLIP's zero-shot protocol written with open_clip's API alone."""
    ref = reference(folder, image_size=images.shape[-1])
    tokenize = open_clip.get_tokenizer(f"local-dir:{folder}")
    mean = torch.tensor(OPEN_CLIP_PREPROCESS["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(OPEN_CLIP_PREPROCESS["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        classes = torch.stack([ref.encode_text(tokenize([t.format(n) for t in templates]), normalize=True)
                               .mean(0) for n in names])
        classes = F.normalize(classes, dim=-1)
        rgb = images.expand(-1, 3, -1, -1) / 255.0
        grey_mean, grey_std = mean.mean(), std.mean()  # a grey image: the channels' mean/std
        features = ref.encode_image((rgb - grey_mean) / grey_std, normalize=True)
    ranked = (features @ classes.t()).argsort(dim=-1, descending=True)
    return {f"zero_shot_top{k}": float((ranked[:, :k] == labels[:, None]).any(1).float().mean())
            for k in (1, 5)}


def test_zero_shot_accuracy_equals_open_clips_own_computation(tiny_clip, tmp_path):
    from mmtrain.data.mnist_imdb import DIGIT_PROMPTS

    folder, _ = tiny_clip
    root = mnist_imdb_fixture(tmp_path / "mnist_imdb", n_train=60, n_test=40, n_reviews=10)
    run = tmp_path / "run"
    train(open_clip_config(f"local-dir:{folder}", "data=mnist_imdb", f"data.root={root}",
                           "stages.pretrain.epochs=0"), run)
    best = run / "checkpoints/pretrain/best.pt"
    result = evaluate_checkpoint(best, "test", zero_shot=True)

    test = checkpoint_data(best).test
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    digits = torch.stack([test[i]["digit"] for i in range(len(test))])
    assert images.shape[1:] == (1, 28, 28) and len(set(digits.tolist())) > 5
    expected = hand_zero_shot(folder, images, digits, [str(d) for d in range(10)], DIGIT_PROMPTS)
    assert {k: result["metrics"][k] for k in expected} == pytest.approx(expected, abs=1e-9)

    own = evaluate_checkpoint(best, "test", zero_shot=True, templates=["{}", "the digit {}"])
    assert own["metrics"]["zero_shot_top1"] == pytest.approx(
        hand_zero_shot(folder, images, digits, [str(d) for d in range(10)], ["{}", "the digit {}"])
        ["zero_shot_top1"], abs=1e-9)


@pytest.mark.parametrize("args, needle", [
    (["model.image_encoder.name=ViT-B-32", "model.image_encoder.pretrained=/no/such/weights.pt"],
     "pretrained=/no/such/weights.pt: no such file"),
    (["model.image_encoder.name=ViT-Q-99"], "'ViT-Q-99' is not an open_clip model"),
])
def test_a_missing_weights_file_or_unknown_model_is_one_line_and_exit_2(tmp_path, args, needle):
    out = run_mmtrain(["train", "model=open_clip", *args], tmp_path, env={"HF_HUB_OFFLINE": "1"})
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert needle in lines[0]


def test_weights_of_another_architecture_are_one_clear_error(tiny_clip, tmp_path):
    from mmtrain.errors import CheckpointError
    from mmtrain.models.image_encoder import OpenCLIPImageEncoder

    _, trained = tiny_clip
    wider = {**OPEN_CLIP_TINY, "vision_cfg": {**OPEN_CLIP_TINY["vision_cfg"], "width": 64}}
    other = tmp_path / "configs" / "mmtrain-wider-clip.json"
    other.parent.mkdir()
    other.write_text(json.dumps(wider))
    open_clip.add_model_config(other)
    with pytest.raises(CheckpointError) as error:
        OpenCLIPImageEncoder("mmtrain-wider-clip", image_size=24, pretrained=str(trained))
    message = str(error.value)
    assert "cannot load open_clip model mmtrain-wider-clip" in message and "\n" not in message
    with pytest.raises(Exception, match="neither a file nor a pretrained tag of mmtrain-wider-clip"):
        OpenCLIPImageEncoder("mmtrain-wider-clip", image_size=24, pretrained="laion9b_no_such_tag")


def test_zero_shot_works_on_our_own_contrastive_checkpoints_and_refuses_a_classifier(tmp_path):
    from mmtrain.errors import CheckpointError

    run = tmp_path / "ours"
    train(compose(TINY), run)  # the default recipe: contrastive pretraining, then a classifier
    result = evaluate_checkpoint(run / "checkpoints/pretrain/best.pt", "test", zero_shot=True)
    assert 0.0 <= result["metrics"]["zero_shot_top1"] <= 1.0
    assert "zero_shot_top5" not in result["metrics"]  # three shapes: a top-5 would always be 1
    with pytest.raises(CheckpointError, match="`mmtrain eval zero_shot=true` needs a contrastive one"):
        evaluate_checkpoint(run / "checkpoints/finetune/best.pt", "test", zero_shot=True)


def test_a_run_resumes_exactly(tiny_clip, tmp_path):
    from tests.helpers import assert_same_weights

    folder, _ = tiny_clip
    save_all = ["trainer.deterministic=true", "trainer.checkpoint.every_n_steps=1",
                "trainer.checkpoint.keep_last=99", "stages.pretrain.epochs=2"]
    reference_run = tmp_path / "reference"
    train(open_clip_config(f"local-dir:{folder}", *save_all), reference_run)
    stage = reference_run / "checkpoints" / "pretrain"
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints" / "pretrain").mkdir(parents=True)
    shutil.copy(stage / "step-0000005.pt", resumed / "checkpoints" / "pretrain" / "last.pt")
    train(open_clip_config(f"local-dir:{folder}", *save_all, "trainer.resume=true"), resumed)
    assert_same_weights(load_checkpoint(resumed / "checkpoints" / "pretrain" / "last.pt")["model"],
                        load_checkpoint(stage / "last.pt")["model"])


def test_layer_decay_numbers_the_residual_blocks_of_both_towers(tiny_clip):
    from mmtrain.engine.optimizer import layer_scales

    folder, _ = tiny_clip
    _, model, _ = built(open_clip_config(f"local-dir:{folder}"))
    scales = layer_scales(model, 0.5)  # two blocks: embeddings at depth 0, blocks 1-2, the top 2
    for tower in ("image_encoder.visual", "text_encoder.text"):
        assert scales[f"{tower}.transformer.resblocks.0.attn.in_proj_weight"] == 0.5
        assert scales[f"{tower}.transformer.resblocks.1.mlp.c_fc.weight"] == 1.0
    assert scales["image_encoder.visual.conv1.weight"] == 0.25
    assert scales["text_encoder.text.token_embedding.weight"] == 0.25
    assert scales["image_encoder.visual.proj"] == scales["text_encoder.text.ln_final.weight"] == 1.0


def test_zero_shot_of_a_fine_tuned_model_equals_open_clips_on_the_same_weights(tiny_clip, tmp_path):
    from mmtrain.data.synthetic import SHAPES

    folder, _ = tiny_clip
    run = tmp_path / "tuned"
    train(open_clip_config(f"local-dir:{folder}", "stages.pretrain.epochs=3", "optimizer.lr=2e-3"), run)
    best = run / "checkpoints/pretrain/best.pt"
    result = evaluate_checkpoint(best, "test", zero_shot=True)["metrics"]
    # The fine-tuned towers are open_clip's own modules: their weights load into open_clip as they are.
    state = load_checkpoint(best)["model"]
    tuned = open_clip.create_model(f"local-dir:{folder}", force_custom_text=True).eval()
    mapped = {k.replace("image_encoder.visual.", "visual.").replace("text_encoder.text.", "text.")
              .replace("heads.contrastive.logit_scale", "logit_scale"): v for k, v in state.items()
              if not k.startswith("fusion.")}  # the fusion: mmtrain's, unused by a contrastive model
    tuned.load_state_dict(mapped)
    data = checkpoint_data(best)
    images = torch.stack([data.test[i]["image"] for i in range(len(data.test))])
    labels = torch.stack([data.test[i]["label"] for i in range(len(data.test))])
    templates = data.info.prompt_templates["label"]
    assert len(templates) > 1  # the average over prompts is part of what is compared
    tokenize = open_clip.get_tokenizer(f"local-dir:{folder}")
    mean = torch.tensor(OPEN_CLIP_PREPROCESS["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(OPEN_CLIP_PREPROCESS["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        classes = F.normalize(torch.stack([tuned.encode_text(tokenize([t.format(s) for t in templates]),
                                                             normalize=True).mean(0) for s in SHAPES]), dim=-1)
        features = tuned.encode_image((images / 255.0 - mean) / std, normalize=True)
    expected = float(((features @ classes.t()).argmax(-1) == labels).float().mean())
    assert result["zero_shot_top1"] == pytest.approx(expected, abs=1e-9)


def test_an_uncached_pretrained_tag_offline_is_one_line_saying_what_to_do(monkeypatch, tmp_path):
    from mmtrain.errors import CheckpointError
    from mmtrain.models.image_encoder import OpenCLIPImageEncoder

    import huggingface_hub

    # huggingface_hub reads its environment at import: set what it read.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError) as error:
        OpenCLIPImageEncoder("ViT-B-32", image_size=224, pretrained="laion2b_s34b_b79k")
    message = str(error.value)
    assert "cannot load open_clip model ViT-B-32 with laion2b_s34b_b79k" in message and "\n" not in message
    assert "pretrained=PATH" in message and error.value.__context__ is None
