"""Start-up latency of the installed `mmtrain` command.

- `mmtrain --help`: wall time of the whole process; it must not import torch (checked here
  too, and in tests/test_report.py).
- `mmtrain train --help`: Hydra composes the config and prints the groups.
- `mmtrain train` to the first training step: from launching the process to the first line
  of the run's log.jsonl (written after step 1 with trainer.log_every_n_steps=1); the time
  to the "run dir" log line (config, data and model built) splits it in two. The run is
  stopped once its first step is logged.

    python scripts/bench_startup.py [--repeat 3] [train overrides ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

MMTRAIN = shutil.which("mmtrain") or str(Path(sys.executable).parent / "mmtrain")


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def help_imports_torch() -> bool:
    code = ("import sys\nfrom mmtrain.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stderr.strip().endswith("True")


def log_time(train_log: Path, marker: str) -> float | None:
    """Epoch seconds of the first train.log line holding `marker` (its logging timestamp)."""
    if not train_log.is_file():
        return None
    for line in train_log.read_text(encoding="utf-8").splitlines():
        if marker in line and line.startswith("["):
            stamp = line[1:line.index("]")]
            return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def time_to_first_step(overrides: list[str]) -> tuple[float, float | None]:
    """Seconds from launch to the first logged step, and to the 'run dir' line (built, not yet training)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [MMTRAIN, "train", f"hydra.run.dir={run_dir}", "trainer.log_every_n_steps=1",
               "trainer.progress=false", *overrides]
        launched = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        log = run_dir / "log.jsonl"
        while not (log.is_file() and log.stat().st_size > 0):
            if proc.poll() is not None:
                raise SystemExit(f"mmtrain train exited with {proc.returncode} before its first step:\n"
                                 f"{proc.stderr.read()}")
            time.sleep(0.005)
        first_step = time.perf_counter() - start
        # SIGTERM, not SIGINT: a shell's background jobs ignore SIGINT, and so would the run.
        proc.terminate()
        proc.communicate(timeout=60)
        built = log_time(run_dir / "train.log", "run dir:")
        return first_step, (built - launched if built is not None else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the `mmtrain train` runs")
    args = parser.parse_args()

    if help_imports_torch():
        raise SystemExit("mmtrain --help imported torch: the CLI must stay light")
    wall([MMTRAIN, "--help"])  # warm the file cache: the figures are for a warm start
    help_s = statistics.median(wall([MMTRAIN, "--help"]) for _ in range(max(5, args.repeat)))
    train_help_s = statistics.median(wall([MMTRAIN, "train", "--help"]) for _ in range(args.repeat))
    runs = [time_to_first_step(args.overrides) for _ in range(args.repeat)]
    first = statistics.median(r[0] for r in runs)
    built = [r[1] for r in runs if r[1] is not None]

    print(f"{os.cpu_count()} CPUs | warm start | median of {args.repeat}+ runs")
    print(f"mmtrain --help                    {help_s:6.2f} s   (torch not imported)")
    print(f"mmtrain train --help              {train_help_s:6.2f} s")
    if built:
        print(f"mmtrain train -> data+model built {statistics.median(built):6.2f} s")
    print(f"mmtrain train -> first step       {first:6.2f} s")


if __name__ == "__main__":
    main()
