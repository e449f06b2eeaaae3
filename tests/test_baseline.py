"""`mmtrain baseline`: per-modality logistic regressions and their product for paired
targets, random and word-overlap retrieval rankers, written beside a run for `mmtrain report`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import TINY_TESTED, train_in_process

pytest.importorskip("sklearn")

from mmtrain.baseline import classification_baselines, main as baseline_main, retrieval_baselines  # noqa: E402
from mmtrain.report import to_markdown  # noqa: E402
from mmtrain.runs import build_report  # noqa: E402


def paired(n: int, seed: int) -> dict:
    """Digit in the pixels (one bright pixel of ten), sentiment in the words; joint = 2*digit + sentiment."""
    rng = np.random.default_rng(seed)
    digit, sentiment = rng.integers(0, 10, n), rng.integers(0, 2, n)
    image = rng.random((n, 10), dtype=np.float32) * 0.1
    image[np.arange(n), digit] += 1.0
    filler = [" ".join(map(str, rng.integers(10, 40, 6))) for _ in range(n)]
    docs = [f"{f} {5 + s} {f}" for f, s in zip(filler, sentiment)]
    return {"image": image, "docs": docs, "digit": digit, "sentiment": sentiment, "label": 2 * digit + sentiment}


def test_product_of_the_modalities_own_baselines_predicts_the_paired_target_neither_can_alone():
    result = classification_baselines(paired(600, 0), paired(300, 1), "label",
                                      {"label": 20, "digit": 10, "sentiment": 2},
                                      {"image": "digit", "text": "sentiment"})
    assert result["pixels_logreg"]["digit_accuracy"] == 1.0
    assert result["tfidf_logreg"]["sentiment_accuracy"] == 1.0
    assert result["pixels_logreg"]["accuracy"] < 0.7 and result["tfidf_logreg"]["accuracy"] < 0.3
    assert result["product"]["accuracy"] == 1.0 and result["product"]["macro_f1"] == 1.0


def test_caption_overlap_finds_images_by_their_other_captions_and_random_ranking_is_at_chance():
    rng = np.random.default_rng(0)
    image_id = np.repeat(np.arange(100, 140), 3)                      # 40 images, 3 captions each
    # Each image's captions share two words of their own among common ones.
    docs = [f"{1000 + 2 * (i - 100)} {1001 + 2 * (i - 100)} " + " ".join(map(str, rng.integers(1, 9, 4)))
            for i in image_id]
    result = retrieval_baselines({"image_id": image_id, "docs": docs})
    assert result["caption_overlap"]["t2i_r1"] == 1.0 and result["caption_overlap"]["i2t_r1"] == 1.0
    assert result["random"]["t2i_r10"] < 0.5 and result["random"]["t2i_r1"] < 0.15
    assert set(result["random"]) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"recall_mean"}


@pytest.mark.slow
def test_baseline_of_a_run_is_written_beside_it_and_the_report_shows_model_and_baseline(tmp_path, capsys):
    run = tmp_path / "run"
    train_in_process(run, list(TINY_TESTED))
    (run / ".hydra").mkdir(exist_ok=True)
    from omegaconf import OmegaConf

    from tests.helpers import compose

    OmegaConf.save(compose(list(TINY_TESTED)), run / ".hydra" / "config.yaml")
    baseline_main([f"run={run}"])
    assert "pixels_logreg" in capsys.readouterr().out
    written = json.loads((run / "baselines.json").read_text())
    assert written["split"] == "test" and written["label"] == "label"
    markdown = to_markdown(build_report([run]))
    assert "test/accuracy" in markdown and "baseline/pixels_logreg/accuracy" in markdown
    assert "baseline/tfidf_logreg/accuracy" in markdown


def test_coco_retrieval_baselines_cover_every_test_caption_without_decoding_an_image(tmp_path, monkeypatch):
    from mmtrain.baseline import compute_baselines
    from mmtrain.data import coco
    from tests.helpers import compose
    from tests.data_helpers import coco_fixture

    root = coco_fixture(tmp_path / "coco")
    monkeypatch.setattr(coco, "load_image", lambda *a: pytest.fail("an image was decoded"))
    cfg = compose(["+experiment=coco_clip", f"data.root={root}", "data.n_val=8", "data.cache=false"])
    result = compute_baselines(cfg)
    doc = json.loads((root / "annotations" / "captions_val2017.json").read_text())
    assert set(result["baselines"]) == {"random", "caption_overlap"}
    # Recall counts every caption of the 16 test images: fractions of len(annotations).
    n = len(doc["annotations"])
    assert round(result["baselines"]["random"]["t2i_r10"] * n) == pytest.approx(result["baselines"]["random"]["t2i_r10"] * n)


def test_a_run_dir_whose_saved_config_names_other_callables_is_refused_before_building(tmp_path):
    from omegaconf import OmegaConf

    from mmtrain.errors import ConfigError
    from tests.helpers import compose

    run = tmp_path / "downloaded_run"
    (run / ".hydra").mkdir(parents=True)
    victim = tmp_path / "victim"
    saved = OmegaConf.to_container(compose(TINY_TESTED))
    saved["data"] = {"_target_": "os.makedirs", "name": str(victim)}
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    with pytest.raises(ConfigError, match=r"data.*os\.makedirs"):
        baseline_main([f"run={run}"])
    assert not victim.exists() and not (run / "baselines.json").exists()
