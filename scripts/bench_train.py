"""Training throughput of `mmtrain train` in three precision settings.

On a GPU: 224 px images, ResNet-50 (or any `model/image_encoder=...`), a transformer text
encoder, batch 256, contrastive pretraining; fp32, bf16-mixed, bf16-mixed + torch.compile.
On a CPU: the same runs at a small size (32 px, the seed's cnn/gru, batch 32, compile with
the aot_eager backend), so the script itself is checked anywhere.

    python scripts/bench_train.py                      # sizes picked by the device
    python scripts/bench_train.py model/image_encoder=vit_b_16 --steps 50

Each setting runs the real CLI in a fresh process (so peak memory is its own) and reads
samples/s, MFU, data-wait share and peak memory from the run's log.jsonl, skipping the
first log interval (warm-up, compilation). Extra arguments are Hydra overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def _choice(group: str, preferred: str, fallback: str) -> str:
    """`preferred` if its config exists (the model zoo may not be merged), else `fallback`."""
    return preferred if (CONF / group / f"{preferred}.yaml").is_file() else fallback


def base_overrides(gpu: bool, steps: int, log_every: int) -> list[str]:
    common = ["~stages.finetune", "stages.pretrain.epochs=1", "test=false", "trainer.progress=false",
              "logger.tensorboard=false", f"trainer.limit_train_batches={steps}",
              f"trainer.log_every_n_steps={log_every}", "trainer.limit_eval_batches=1"]
    if gpu:
        batch = 256
        return common + [
            f"model/image_encoder={_choice('model/image_encoder', 'resnet50', 'cnn')}",
            f"model/text_encoder={_choice('model/text_encoder', 'transformer', 'gru')}",
            "data.image_size=224", f"data.n_train={batch * (steps + 1)}", "data.n_val=512",
            f"trainer.batch_size={batch}", "trainer.num_workers=4", "trainer.channels_last=true",
        ]
    return common + ["data.image_size=32", f"data.n_train={32 * (steps + 1)}", "data.n_val=64",
                     "trainer.batch_size=32", "trainer.device=cpu"]


SETTINGS = {
    "fp32": ["trainer.precision=32"],
    "bf16-mixed": ["trainer.precision=bf16-mixed"],
    "bf16-mixed + compile": ["trainer.precision=bf16-mixed", "trainer.compile=true"],
}


def run_setting(overrides: list[str], workdir: Path) -> dict[str, float]:
    run = workdir / "run"
    cmd = [sys.executable, "-m", "mmtrain", "train", *overrides, f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "train"][1:] or rows[-1:]
    prefix = "pretrain/train/"

    def mean(key: str) -> float | None:
        values = [r[prefix + key] for r in rows if prefix + key in r]
        return sum(values) / len(values) if values else None

    return {k: mean(k) for k in ("samples_per_s", "mfu", "data_wait", "peak_mem_gb")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per setting")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every setting")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    steps = args.steps or (60 if gpu else 20)
    base = base_overrides(gpu, steps, log_every=max(1, steps // 4)) + args.overrides
    settings = {name: list(extra) for name, extra in SETTINGS.items()}
    if not gpu:  # inductor compiles C++ for a minute on a small CPU; aot_eager checks the path
        settings["bf16-mixed + compile"].append("trainer.compile_backend=aot_eager")
    device = torch.cuda.get_device_name() if gpu else f"{os.cpu_count()}-core CPU, no GPU"
    print(f"device: {device}\noverrides: {' '.join(base)}\n")
    print(f"{'setting':<22} {'samples/s':>10} {'MFU':>6} {'data wait':>9} {'peak mem':>9}")
    for name, extra in settings.items():
        with tempfile.TemporaryDirectory() as tmp:
            r = run_setting(base + extra, Path(tmp))
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{name:<22} {r['samples_per_s']:>10.1f} {mfu:>6} {100 * r['data_wait']:>8.1f}% "
              f"{r['peak_mem_gb']:>7.2f} GB", flush=True)


if __name__ == "__main__":
    main()
