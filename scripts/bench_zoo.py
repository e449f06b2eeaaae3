"""Training-step time of every image encoder, text encoder and fusion on the synthetic set.

    python scripts/bench_zoo.py [--batch 128] [--steps 5] [--threads 1]

Each row swaps one part of the default model (cnn + gru + concat, classification head) and
times forward + backward + AdamW step on a fixed batch of 32 px images, after 2 warm-up
steps. The figures compare costs on one machine; README's Performance section lists them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import hydra.utils
import torch
from hydra import compose, initialize_config_dir

from mmtrain import data as data_lib
from mmtrain.config import register_schemas
from mmtrain.data.batch import collate
from mmtrain.models.model import build_model

CONF = str(Path(__file__).resolve().parents[1] / "conf")
ROWS = [("model/image_encoder", c) for c in ("cnn", "resnet18", "resnet34", "resnet50", "vit_tiny", "vit_b_16")] + \
       [("model/text_encoder", c) for c in ("gru", "lstm", "transformer", "bow")] + \
       [("model/fusion", c) for c in ("concat", "sum", "product", "gated", "film", "attention", "bilinear", "late")]


def step_time(group: str, choice: str, batch_size: int, steps: int) -> tuple[float, float]:
    """-> (seconds per training step, million parameters)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"{group}={choice}", "data.n_train=512", "data.n_val=8",
                                                      "data.n_test=8", "~stages.pretrain"])
    data = data_lib.build(cfg.data)
    model = build_model(cfg.model, data.info)
    task = hydra.utils.instantiate(cfg.stages.finetune.task, _convert_="all")
    task.attach(model, data.info)
    batch = collate(data.train.__getitems__(list(range(batch_size))))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(2 + steps):
        if i == 2:
            start = time.perf_counter()
        loss = task.training_step(model, batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps, sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    register_schemas()
    print(f"| choice | parameters | ms / step (batch {args.batch}, 32 px) |\n|---|---|---|")
    for group, choice in ROWS:
        seconds, params = step_time(group, choice, args.batch, args.steps)
        print(f"| `{group}={choice}` | {params:.2f}M | {1000 * seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
