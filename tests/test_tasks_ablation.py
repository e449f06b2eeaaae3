"""End to end through `train()` and `mmtrain eval`: task artifacts land in the run dir, and
`ablate=true` reports every metric with both modalities, without the image and without
the text (captioning, whose text is the target, without the image only)."""

from __future__ import annotations

import pytest

from mmtrain.eval import evaluate_checkpoint, run as eval_run
from mmtrain.train import train
from tests.helpers import QUIET, compose
from tests.zoo import compose_config

TINY_RUN = ["trainer.batch_size=16", "trainer.device=cpu", *QUIET]


def test_classification_run_writes_a_confusion_png_and_eval_reports_three_ways(tmp_path, capsys):
    cfg = compose_config(task="classification", extra=TINY_RUN + ["stages.pretrain.epochs=2",
                                                                  "stages.pretrain.task.modality_dropout=0.2"])
    summary = train(cfg, tmp_path)
    png = tmp_path / "artifacts" / "classification_confusion.png"
    assert summary["artifacts"] == [str(png)] and png.read_bytes()[:4] == b"\x89PNG"

    best = tmp_path / "checkpoints" / "pretrain" / "best.pt"
    eval_cfg = compose([f"ckpt={best}", "ablate=true", "device=cpu", f"out={tmp_path / 'eval.json'}"],
                       config_name="eval")
    eval_run(eval_cfg)
    table = capsys.readouterr().out
    assert "both" in table and "without image" in table and "without text" in table
    assert (tmp_path / "eval" / "classification_confusion.png").is_file()

    result = evaluate_checkpoint(best, ablate=True, device="cpu")
    assert result["metrics"] == pytest.approx(summary["test"])
    for key in ("metrics_without_image", "metrics_without_text"):
        assert set(result[key]) == set(result["metrics"]) == {"loss", "accuracy", "macro_f1"}


def test_contrastive_then_captioning_run_writes_examples_and_ablates_by_task(tmp_path):
    cfg = compose([
            "stages=contrastive_captioning", "stages.pretrain.epochs=1", "stages.caption.epochs=1",
            "data.n_train=64", "data.n_val=16", "data.n_test=16", "data.image_size=16",
            "model/text_encoder=bow", "model.image_encoder.width=8", "model.image_encoder.depth=2",
            "stages.caption.task.dim=32", "stages.caption.task.heads=2", "stages.caption.task.depth=1",
            *TINY_RUN])
    summary = train(cfg, tmp_path)
    assert {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d", "loss"} == set(summary["test"])
    assert (tmp_path / "artifacts" / "captioning_examples.json").is_file()

    caption = evaluate_checkpoint(tmp_path / "checkpoints" / "caption" / "best.pt", ablate=True, device="cpu")
    assert "metrics_without_image" in caption and "metrics_without_text" not in caption
    retrieval = evaluate_checkpoint(tmp_path / "checkpoints" / "pretrain" / "best.pt", ablate=True,
                                    device="cpu", split="val")
    assert set(retrieval["metrics_without_text"]) == set(retrieval["metrics"])
    assert "i2t_r1" in retrieval["metrics_without_image"]


def test_coco_caption_recipe_on_official_format_files_scores_against_every_reference(tmp_path):
    from tests.data_helpers import coco_fixture

    root = coco_fixture(tmp_path / "coco")
    cfg = compose([
            "+experiment=coco_caption", "model/image_encoder=cnn", f"data.root={root}", "data.image_size=32",
            "data.n_val=8",
            "data.tokenizer_options.max_length=16", "data.cache=false", "trainer.num_workers=0",
            "stages.pretrain.epochs=1", "stages.caption.epochs=1", "stages.pretrain.task.embed_dim=16",
            "model.image_encoder.width=8", "model.image_encoder.dim=16", "model/text_encoder=bow",
            "model.text_encoder.dim=16", "stages.caption.task.dim=16", "stages.caption.task.heads=2",
            "stages.caption.task.depth=1", "stages.caption.task.max_length=17", *TINY_RUN])
    summary = train(cfg, tmp_path / "run")
    assert set(summary["test"]) == {"loss", "bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d"}
    examples = (tmp_path / "run" / "artifacts" / "captioning_examples.json").read_text()
    import json

    refs = [len(e["references"]) for e in json.loads(examples)]
    assert max(refs) > 1, "COCO images have several captions: each is scored against all of them"
    # Every test image, with its captions exactly as the annotation file has them.
    doc = json.loads((root / "annotations" / "captions_val2017.json").read_text())
    raw: dict = {}
    for ann in sorted(doc["annotations"], key=lambda a: (a["image_id"], a["id"])):
        raw.setdefault(ann["image_id"], []).append(ann["caption"])
    assert {e["image"]: e["references"] for e in json.loads(examples)} == raw
