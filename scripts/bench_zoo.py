"""Training-step time of every image encoder, text encoder and fusion on the synthetic set.

    python scripts/bench_zoo.py [--batch 128] [--steps 5] [--threads 1] [--lengths 32,128,256,512]
                                [--only text]

Each row swaps one part of the default model (cnn + gru + concat, classification head) and
times forward + backward + AdamW step on a fixed batch of 32 px images, after 2 warm-up
steps. The text encoders are also timed at review lengths (`--lengths`): random ids from a
20 000-word vocabulary (the mnist_imdb recipe's), half of the batch at the full length and
the rest between a quarter of it and the full length, as truncated reviews are. The figures
compare costs on one machine; README's Performance section lists them. Timed by CPU clock
(process time): with one torch thread that is the step's own cost, which other jobs on a
shared machine inflate far less than the wall clock.
"""

from __future__ import annotations

import argparse
import time

import torch

from mmtrain import data as data_lib
from mmtrain.build import build_tasks
from mmtrain.config import compose_config
from mmtrain.data.batch import collate
from mmtrain.models.model import build_model

ROWS = [("model/image_encoder", c) for c in ("cnn", "resnet18", "resnet34", "resnet50", "vit_tiny", "vit_b_16")] + \
       [("model/text_encoder", c) for c in ("gru", "lstm", "transformer", "bow")] + \
       [("model/fusion", c) for c in ("concat", "sum", "product", "gated", "film", "attention", "bilinear", "late")]


TEXT_ENCODERS = ("gru", "lstm", "transformer", "bow")
VOCAB = 20_000


def step_time(group: str, choice: str, batch_size: int, steps: int,
              text_length: int | None = None) -> tuple[float, float]:
    """-> (seconds per training step, million parameters)."""
    overrides = [f"{group}={choice}", "data.n_train=512", "data.n_val=8", "data.n_test=8", "~stages.pretrain"]
    if text_length and choice == "transformer":
        overrides.append(f"model.text_encoder.max_length={max(256, text_length)}")
    cfg = compose_config("train", overrides)
    data = data_lib.build(cfg.data)
    if text_length:
        data.info.vocab_size = VOCAB
    model = build_model(cfg.model, data.info)
    (stage,) = build_tasks(cfg, model, data.info)
    task = stage.task
    batch = collate(data.train.__getitems__(list(range(batch_size))))
    if text_length:
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(text_length // 4, text_length + 1, (batch_size,), generator=g)
        lengths[: batch_size // 2] = text_length
        ids = torch.randint(4, VOCAB, (batch_size, text_length), generator=g)
        batch["text"] = ids * (torch.arange(text_length)[None] < lengths[:, None])
        batch["text_lengths"] = lengths
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for i in range(2 + steps):
        if i == 2:
            start = time.process_time()
        loss = task.training_step(model, batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.process_time() - start) / steps, sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lengths", default="32,128,256,512", help="text lengths for the text encoders")
    parser.add_argument("--only", choices=("zoo", "text"), help="only the zoo rows or only the text lengths")
    parser.add_argument("--text-encoders", default=",".join(TEXT_ENCODERS), help="which text encoders to time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.only != "text":
        print(f"| choice | parameters | ms / step (batch {args.batch}, 32 px) |\n|---|---|---|")
        for group, choice in ROWS:
            seconds, params = step_time(group, choice, args.batch, args.steps)
            print(f"| `{group}={choice}` | {params:.2f}M | {1000 * seconds:.0f} |", flush=True)
    if args.only != "zoo":
        lengths = [int(n) for n in args.lengths.split(",")]
        print(f"\n| text encoder | " + " | ".join(f"{n} tokens" for n in lengths)
              + f" |  (ms / step, batch {args.batch}, vocabulary {VOCAB})\n|---|" + "---|" * len(lengths))
        for choice in args.text_encoders.split(","):
            times = [step_time("model/text_encoder", choice, args.batch, args.steps, n)[0] for n in lengths]
            print(f"| `{choice}` | " + " | ".join(f"{1000 * t:.0f}" for t in times) + " |", flush=True)


if __name__ == "__main__":
    main()
