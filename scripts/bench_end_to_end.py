"""What does a whole default run cost under mmtrain, against the same recipe written by hand?

`mmtrain train` with no overrides (as a user runs it: Hydra, run dir, checkpoints every
epoch, TensorBoard, metrics.json, the confusion PNG) against a plain PyTorch script that
does the same work with nothing else: the same data (the synthetic set), the same model
(CNN + GRU + concat), the same losses and metrics (the contrastive and classification
tasks' own code), the same stages, epochs, batch sizes, optimizer groups, schedule and
gradient clipping, a validation after every epoch, the best epoch's weights saved and
tested at the end. Each runs in its own fresh process, alternating in rounds (in turn
reversed), and is charged its whole process's CPU time (user + system, start-up and
imports included) as the operating system counts it: on a machine shared with other work
that is steadier than the wall clock.

    python scripts/bench_end_to_end.py [--rounds 3] [--threads N] [--n-train N] [--epochs P,F]

Prints both processes' CPU and wall times, their test accuracy and loss, and the median
over rounds of the CPU-time ratio. The two train the very same model (same batches, same
initial weights, same dropout draws): the script fails when their test metrics differ,
since the ratio would then compare different work. Target: mmtrain within 5 %, a ratio <= 1.05. `--n-train` and
`--epochs` shrink both alike (the test suite runs it that way: the two must still agree).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MMTRAIN = shutil.which("mmtrain") or str(Path(sys.executable).parent / "mmtrain")

# The default recipe (conf/train.yaml with data: synthetic, stages: pretrain_finetune,
# optimizer: adamw, scheduler: cosine, trainer: default), written out as a script would.
SEED, BATCH, EVAL_BATCH, LR, WEIGHT_DECAY, CLIP = 0, 128, 256, 2e-3, 0.01, 1.0
WARMUP_RATIO = 0.05
N_TRAIN, EPOCHS = 10000, (2, 8)


def minimal(out_dir: Path, threads: int | None, n_train: int, epochs: tuple[int, int]) -> None:
    """The recipe as a hand-written loop; prints its test accuracy and loss as JSON."""
    import torch
    from torch.utils.data import DataLoader

    from mmtrain.data.batch import collate
    from mmtrain.data.sampler import EpochSampler
    from mmtrain.data.synthetic import build_synthetic
    from mmtrain.engine.threads import default_num_threads
    from mmtrain.models.fusion import ConcatFusion
    from mmtrain.models.image_encoder import CNNEncoder
    from mmtrain.models.model import MultimodalModel
    from mmtrain.models.text_encoder import GRUEncoder
    from mmtrain.tasks.classification import ClassificationTask
    from mmtrain.tasks.contrastive import ContrastiveTask

    torch.set_num_threads(threads or default_num_threads())
    torch.manual_seed(SEED)
    data = build_synthetic(n_train=n_train, seed=SEED,
                           tokenizer_options={"kind": "word", "vocab_size": 1000, "max_length": 32})
    info = data.info
    image = CNNEncoder(in_channels=info.image_channels, image_size=info.image_size, width=32, depth=3, dim=128)
    text = GRUEncoder(vocab_size=info.vocab_size, pad_id=info.pad_id, embed_dim=64, hidden_dim=128,
                      num_layers=1, bidirectional=True, dropout=0.0)
    fusion = ConcatFusion(image.out_dim, text.out_dim, dim=256, dropout=0.1)
    model = MultimodalModel(image, text, fusion, info.image_mean, info.image_std)
    tasks = {"contrastive": ContrastiveTask(embed_dim=128, init_temperature=0.07, max_logit_scale=100.0,
                                            recall_at=[1, 5, 10], eval_chunk_size=1024),
             "classification": ClassificationTask(label="label", hidden_dim=256, dropout=0.1)}
    for task in tasks.values():
        task.attach(model, info)
    # mmtrain's sampler, for the very same batches (its order is a function of seed and epoch);
    # each loader has its own generator, so that starting an epoch does not draw from the
    # global RNG that dropout uses.
    sampler = EpochSampler(len(data.train), shuffle=True, seed=SEED)
    train = DataLoader(data.train, batch_size=BATCH, sampler=sampler, drop_last=True, collate_fn=collate,
                       generator=torch.Generator().manual_seed(SEED))
    val = DataLoader(data.val, batch_size=EVAL_BATCH, collate_fn=collate, generator=torch.Generator())
    test = DataLoader(data.test, batch_size=EVAL_BATCH, collate_fn=collate, generator=torch.Generator())

    def evaluate(task: ContrastiveTask | ClassificationTask, loader: DataLoader) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            metrics = task.evaluate(model, iter(loader)).metrics
        model.train()
        return metrics

    best_path = out_dir / "best.pt"
    for kind, stage_epochs in zip(("contrastive", "classification"), epochs):
        task = tasks[kind]
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=LR)
        total = len(train) * stage_epochs
        warmup = round(WARMUP_RATIO * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: (s + 1) / warmup if s < warmup else
            0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
        monitor = task.monitor  # what picks best.pt in mmtrain too
        best = -1.0
        model.train()
        for epoch in range(stage_epochs):
            sampler.set_epoch(epoch)
            for batch in train:
                loss = task.training_step(model, batch)["loss"]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
            value = evaluate(task, val)[monitor]
            if value > best:
                best = value
                torch.save(model.state_dict(), best_path)
    model.load_state_dict(torch.load(best_path))
    metrics = evaluate(tasks["classification"], test)
    print(json.dumps({"accuracy": metrics["accuracy"], "loss": metrics["loss"]}))


def cpu_of(command: list[str], cwd: str) -> tuple[float, float, str]:
    """Run `command`; -> (its CPU seconds, user + system, its own children included; wall
    seconds; stdout)."""
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return cpu, wall, stdout


def mmtrain_run(threads: int | None, n_train: int, epochs: tuple[int, int]) -> tuple[float, float, dict]:
    overrides = ["trainer.progress=false", f"data.n_train={n_train}", f"stages.pretrain.epochs={epochs[0]}",
                 f"stages.finetune.epochs={epochs[1]}"] + ([f"trainer.num_threads={threads}"] if threads else [])
    with tempfile.TemporaryDirectory() as tmp:
        cpu, wall, _ = cpu_of([MMTRAIN, "train", *overrides], tmp)
        (run_dir,) = (Path(tmp) / "outputs").glob("*/*")
        test = json.loads((run_dir / "metrics.json").read_text())["test"]
    return cpu, wall, test


def minimal_run(threads: int | None, n_train: int, epochs: tuple[int, int]) -> tuple[float, float, dict]:
    command = [sys.executable, __file__, "--minimal", f"--n-train={n_train}", f"--epochs={epochs[0]},{epochs[1]}"]
    command += [f"--threads={threads}"] if threads else []
    with tempfile.TemporaryDirectory() as tmp:
        cpu, wall, stdout = cpu_of(command, tmp)
    return cpu, wall, json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads in both (default: mmtrain's default)")
    parser.add_argument("--n-train", type=int, default=N_TRAIN, help="training pairs (default: the recipe's)")
    parser.add_argument("--epochs", default=",".join(map(str, EPOCHS)),
                        help="pretraining,fine-tuning epochs (default: the recipe's)")
    parser.add_argument("--minimal", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    pretrain, finetune = (int(x) for x in args.epochs.split(","))
    epochs = (pretrain, finetune)
    if args.minimal:
        minimal(Path.cwd(), args.threads, args.n_train, epochs)
        return
    runs = {"minimal": minimal_run, "mmtrain": mmtrain_run}
    results: dict[str, list[tuple[float, float, dict]]] = {name: [] for name in runs}
    ratios = []
    for r in range(args.rounds):
        for name in list(runs)[:: -1 if r % 2 else 1]:
            results[name].append(runs[name](args.threads, args.n_train, epochs))
        (m_cpu, m_wall, m_test), (t_cpu, t_wall, t_test) = results["mmtrain"][-1], results["minimal"][-1]
        ratios.append(m_cpu / t_cpu)
        print(f"round {r + 1}/{args.rounds}: mmtrain {m_cpu:.1f} s CPU ({m_wall:.1f} s wall) | "
              f"minimal {t_cpu:.1f} s CPU ({t_wall:.1f} s wall) | ratio {ratios[-1]:.3f}", flush=True)
        # Same batches, same initial weights, same dropout draws: the two end with the same model.
        # Anything else means they did different work and the ratio compares nothing.
        for key in ("accuracy", "loss"):
            if not math.isclose(m_test[key], t_test[key], rel_tol=1e-4, abs_tol=1e-6):
                raise SystemExit(f"the two runs trained different models: test {key} {m_test[key]:.6f} (mmtrain) "
                                 f"vs {t_test[key]:.6f} (minimal); the script no longer matches the recipe")
    print(f"\n{os.cpu_count()} CPUs | {args.rounds} rounds | threads: {args.threads or 'default'}")
    for name, rows in results.items():
        print(f"{name:8s} CPU {statistics.median(r[0] for r in rows):7.1f} s  wall "
              f"{statistics.median(r[1] for r in rows):7.1f} s  test accuracy {rows[-1][2]['accuracy']:.4f}  "
              f"loss {rows[-1][2]['loss']:.6f}")
    print(f"mmtrain / minimal CPU time: median {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)}; target <= 1.05)")


if __name__ == "__main__":
    main()
