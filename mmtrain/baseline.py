"""`mmtrain baseline`: classical per-modality baselines on exactly the split mmtrain builds.

    mmtrain baseline +experiment=mnist_imdb data.root=DIR      # the same config as train
    mmtrain baseline run=outputs/mnist_imdb/<time>              # a run's own data config

Classification data (labels in the batches):
- `pixels_logreg`: logistic regression on the raw pixels (scaled to [0, 1]);
- `tfidf_logreg`: logistic regression on TF-IDF of word 1- and 2-grams of the tokens the
  model reads (same vocabulary, same truncation);
- `product`, for a paired target that is a function of one label per modality (mnist_imdb's
  joint and xor: digit from the image, sentiment from the text): each modality's model
  predicts its own label, and the target's probability is the sum over label pairs that
  give it of the product of the two, the best a late fusion of the two can do.
Retrieval data (captions with image ids, e.g. COCO): `random` (a seeded random ranking) and
`caption_overlap` (each image represented by the TF-IDF of its other reference captions,
ranked by cosine: how far word overlap alone gets), with recall@1/5/10 both ways.

Fitted on the train split, scored on the test split (`split=val` to change), and written
to `<run>/baselines.json` (with `run=DIR`; otherwise `out=PATH`, default
`baselines/<name>.json`), where `mmtrain report` shows them beside the run's test metrics.
Needs scikit-learn: `pip install "mmtrain[baseline]"`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mmtrain.errors import ConfigError

RECALL_AT = (1, 5, 10)


def _arrays(dataset: Any, batch_size: int = 1024) -> dict[str, Any]:
    """image (N x D float32 in [0, 1]), docs (token ids as text), and every other key, as numpy."""
    import numpy as np

    from mmtrain.data.loader import make_loader

    images, docs, columns = [], [], {}
    for batch in make_loader(dataset, batch_size, train=False, num_workers=0):
        images.append(batch["image"].flatten(1).numpy().astype(np.float32) / 255.0)
        for row, n in zip(batch["text"].tolist(), batch["text_lengths"].tolist()):
            docs.append(" ".join(map(str, row[:n])))
        for key, value in batch.items():
            if key not in ("image", "text", "text_lengths"):
                columns.setdefault(key, []).append(value.numpy())
    return {"image": np.concatenate(images), "docs": docs, **{k: np.concatenate(v) for k, v in columns.items()}}


def _caption_arrays(captions: dict[str, Any]) -> dict[str, Any]:
    docs = [" ".join(map(str, row[:n])) for row, n in zip(captions["text"].tolist(),
                                                          captions["text_lengths"].tolist())]
    return {"docs": docs, "image_id": captions["image_id"].numpy()}


def _tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Documents are token ids: every whitespace-separated id is a word.
    return TfidfVectorizer(ngram_range=(1, 2), token_pattern=r"\S+", sublinear_tf=True, min_df=1)


def _logreg():
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    # 300 lbfgs iterations get within noise of convergence on pixels; the warning would only alarm.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    return LogisticRegression(max_iter=300, C=1.0)


def _scores(pred: Any, target: Any, num_classes: int) -> dict[str, float]:
    import torch

    from mmtrain.metrics import accuracy, confusion_matrix, macro_f1

    confusion = confusion_matrix(torch.as_tensor(pred), torch.as_tensor(target), num_classes)
    return {"accuracy": accuracy(confusion), "macro_f1": macro_f1(confusion)}


def _proba(model: Any, x: Any, num_classes: int) -> Any:
    """n x num_classes probabilities, zero for classes the training split never had."""
    import numpy as np

    out = np.zeros((x.shape[0], num_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


def classification_baselines(train: dict[str, Any], test: dict[str, Any], label: str, num_classes: dict[str, int],
                             modality_labels: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per-modality logistic regressions on `label`, and their product for a paired target."""
    import numpy as np

    tfidf = _tfidf()
    features = {"image": (train["image"], test["image"]),
                "text": (tfidf.fit_transform(train["docs"]), tfidf.transform(test["docs"]))}
    names = {"image": "pixels_logreg", "text": "tfidf_logreg"}
    n = num_classes[label]
    out: dict[str, dict[str, float]] = {}
    own: dict[str, Any] = {}
    for modality, (x_train, x_test) in features.items():
        model = _logreg().fit(x_train, train[label])
        out[names[modality]] = _scores(model.predict(x_test), test[label], n)
        own_label = modality_labels.get(modality)
        if own_label and own_label != label:
            model = _logreg().fit(x_train, train[own_label])
            own[modality] = (own_label, _proba(model, x_test, num_classes[own_label]))
            out[names[modality]][f"{own_label}_accuracy"] = float((model.predict(x_test) == test[own_label]).mean())
    if len(own) == 2:
        (image_label, p_image), (text_label, p_text) = own["image"], own["text"]
        # The target as a function of the two labels, read off the training pairs.
        table = np.full((num_classes[image_label], num_classes[text_label]), -1)
        table[train[image_label], train[text_label]] = train[label]
        joint = p_image[:, :, None] * p_text[:, None, :]
        proba = np.zeros((joint.shape[0], n))
        for a, b in zip(*np.nonzero(table >= 0)):
            proba[:, table[a, b]] += joint[:, a, b]
        out["product"] = _scores(proba.argmax(1), test[label], n)
    return out


def retrieval_baselines(test: dict[str, Any], seed: int = 0) -> dict[str, dict[str, float]]:
    """recall@K both ways of a random ranking and of caption overlap, per caption and per image."""
    import numpy as np
    from scipy.sparse import csr_matrix

    ids = test["image_id"]
    images, text_image = np.unique(ids, return_inverse=True)
    n_image = len(images)
    rng = np.random.default_rng(seed)
    docs = _tfidf().fit_transform(test["docs"])          # rows L2-normalized
    owned = csr_matrix((np.ones(len(ids)), (text_image, np.arange(len(ids)))), shape=(n_image, len(ids)))
    image_docs = (owned @ docs).T.tocsr()               # vocabulary x images: each the sum of its captions

    def overlap(rows: slice) -> Any:
        """Text x image scores, leaving each caption out of its own image's side."""
        t = docs[rows]
        sims = (t @ image_docs).toarray()
        self_sim = np.asarray(t.multiply(t).sum(1)).ravel()
        sims[np.arange(sims.shape[0]), text_image[rows]] -= self_sim
        return sims

    rankers = {"random": lambda rows: rng.random((rows.stop - rows.start, n_image)), "caption_overlap": overlap}
    out = {}
    for name, score in rankers.items():
        sims = np.concatenate([score(slice(s, min(s + 2048, len(ids)))) for s in range(0, len(ids), 2048)])
        own = sims[np.arange(len(ids)), text_image]
        t2i = (sims > own[:, None]).sum(1)
        # image -> text: how many captions outscore the best of the image's own.
        best = np.full(n_image, -np.inf)
        np.maximum.at(best, text_image, own)
        i2t = (sims.T > best[:, None]).sum(1)
        metrics = {}
        for k in RECALL_AT:
            metrics[f"i2t_r{k}"] = float((i2t < k).mean())
            metrics[f"t2i_r{k}"] = float((t2i < k).mean())
        metrics["recall_mean"] = float(np.mean([metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_AT]))
        out[name] = metrics
    return out


def compute_baselines(cfg: Any, split: str = "test") -> dict[str, Any]:
    """The baselines for `cfg.data`, fitted on its train split and scored on `split`."""
    from mmtrain.build import build_data

    bundle = build_data(cfg)
    dataset = bundle.split(split)
    if hasattr(dataset, "captions"):  # retrieval needs only the captions: no image is decoded
        test = _caption_arrays(dataset.captions())
    else:
        test = _arrays(dataset)
    labels = [k for k in bundle.info.num_classes if k in test]
    result: dict[str, Any] = {"split": split, "data": str(cfg.data.get("_target_", ""))}
    if labels:
        label = cfg.stages[list(cfg.stages)[-1]].task.get("label") or "label"
        if label not in labels:
            label = labels[0]
        train = _arrays(bundle.train)
        result["label"] = label
        result["baselines"] = classification_baselines(train, test, label, bundle.info.num_classes,
                                                       dict(bundle.info.modality_labels))
    elif "image_id" in test:
        result["baselines"] = retrieval_baselines(test, seed=int(cfg.get("seed", 0)))
    else:
        raise ConfigError("this data has neither class labels nor image ids: no baseline applies")
    return result


def _load_config(argv: list[str]) -> tuple[Any, Path | None, Path | None, str]:
    """(config, run dir, output file, split) from `run=DIR`, `out=PATH`, `split=` and Hydra overrides."""
    from omegaconf import OmegaConf

    from mmtrain.config import compose_config

    options = {k: None for k in ("run", "out", "split")}
    overrides = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key in options:
            options[key] = value
        else:
            overrides.append(arg)
    run = Path(options["run"]) if options["run"] else None
    if run is not None:
        saved = run / ".hydra" / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"{run} has no .hydra/config.yaml: pass a run dir that `mmtrain train` wrote")
        from mmtrain.trust import check_config_targets

        cfg = OmegaConf.merge(OmegaConf.load(saved), OmegaConf.from_dotlist(overrides))
        # A run dir may come from anyone: its config builds only what mmtrain's own configs name.
        check_config_targets(cfg, source=str(saved))
    else:
        cfg = compose_config("train", overrides)
    out = Path(options["out"]) if options["out"] else (run / "baselines.json" if run is not None else None)
    return cfg, run, out, options["split"] or "test"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ConfigError('mmtrain baseline needs scikit-learn: pip install "mmtrain[baseline]"') from None
    cfg, run, out, split = _load_config(argv)
    result = compute_baselines(cfg, split)
    out = out or Path("baselines") / f"{cfg.get('name', 'run')}.json"
    from mmtrain.atomic import write_json

    write_json(out, result)
    metrics = list(dict.fromkeys(m for scores in result["baselines"].values() for m in scores))
    width = max(len(n) for n in result["baselines"]) + 2
    col = max(len(m) for m in metrics) + 2
    print(f"baselines on the {split} split" + (f", target {result['label']}" if "label" in result else ""))
    print(f"{'baseline':<{width}}" + "".join(f"{m:>{col}}" for m in metrics))
    for name, scores in result["baselines"].items():
        print(f"{name:<{width}}" + "".join(f"{scores[m]:>{col}.4f}" if m in scores else " " * col for m in metrics))
    print(f"written: {out}" + (f" (beside {run / 'metrics.json'})" if run is not None else ""))
