"""`mmtrain <subcommand> [args]`: a thin dispatcher in front of the Hydra apps.

Hydra owns sys.argv, so argparse cannot sit in front of it (Hydra issues 215, 443):
this pops the subcommand and hands the rest to that subcommand's entry point. It is
also the only place that turns errors into a message and an exit code. Nothing here
imports torch, so `mmtrain --help` is instant.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import sys
import traceback
from typing import Any, TextIO

# name -> (module with a `main()`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("mmtrain.train", "train a model: stages from the config, then test (Hydra overrides)"),
    "eval": ("mmtrain.eval", "evaluate a checkpoint: ckpt=PATH or run=DIR (Hydra overrides)"),
    "data": ("mmtrain.data.commands", "download the real datasets (verified) or write fake ones: data download|synth"),
    "predict": ("mmtrain.predict", "run a checkpoint on your images and texts: classes, captions, similarities, zero-shot"),
    "embed": ("mmtrain.embed", "embed a folder of images (or a text file) into a searchable index, resumable"),
    "search": ("mmtrain.search", "rank an index's entries by a text or image query; contact sheet of the top k"),
    "export": ("mmtrain.export", "export a checkpoint's inference graphs to ONNX or TorchScript, parity-checked"),
    "report": ("mmtrain.report", "summarize run dirs or a sweep: table best first, CSV, plots"),
    "baseline": ("mmtrain.baseline", "classical per-modality baselines on a run's data split: run=DIR or overrides"),
}

USAGE = """usage: mmtrain <command> [args]

Train multimodal (image + text) models from Hydra configs.

commands:
{commands}

Hydra commands take overrides (key=value, group=option, +experiment=NAME) and
Hydra's own flags: --help, --cfg job, -m/--multirun, --config-dir DIR.

examples:
  mmtrain train                                  # synthetic data, runs anywhere
  mmtrain train +experiment=mnist_imdb model/fusion=gated
  mmtrain train -m optimizer.lr=1e-3,3e-4
  mmtrain eval run=outputs/synthetic/2026-11-23_12-00-00

Set HYDRA_FULL_ERROR=1 for a full traceback on errors.
"""


def _usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def _worker_message(text: str) -> str:
    """torch re-raises a DataLoader worker's exception with the worker's whole traceback as
    its message; the worker's own message is the last line, after 'module.Type: '."""
    if "Original Traceback (most recent call last):" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    return re.sub(r"^[\w.]+: ", "", last.strip(), count=1)


def _one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf messages span lines and carry a cause; say it in one line."""
    # Hydra appends its config search path to an unknown choice: noise for a user.
    parts = [_worker_message(str(exc)).split("Config search path")[0]]
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in parts[0]:
        parts.append(str(cause).splitlines()[0])
    text = " ".join(p.strip() for p in parts)
    text = re.sub(r":\s*\n\t", ": ", text).replace("\n\t", ", ")
    return " ".join(text.split())


class _DropHydraJobLine:
    """Hydra writes 'Error executing job with overrides: [...]' to stderr before raising;
    for a single run that repeats what the user typed, so the one error line stands alone."""

    prefix = "Error executing job with overrides:"

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if text.startswith(self.prefix):
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _strip_subcommand_from_completion(name: str) -> None:
    # Hydra's shell completion parses COMP_LINE itself; it must not see the subcommand.
    line = os.environ.get("COMP_LINE")
    if line:
        words = line.split(" ", 2)
        if len(words) >= 2 and words[1] == name:
            os.environ["COMP_LINE"] = " ".join([words[0]] + words[2:])
            point = int(os.environ.get("COMP_POINT", len(line)))
            os.environ["COMP_POINT"] = str(max(0, point - len(name) - 1))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        from mmtrain import __version__

        print(f"mmtrain {__version__}")
        return
    if argv[0] in ("-sc", "--shell-completion"):
        # Hydra's completion script calls back `mmtrain -sc query=bash` with the whole
        # COMP_LINE: complete a subcommand's name, or route to the subcommand it names.
        words = os.environ.get("COMP_LINE", "").split(" ")
        if len(words) <= 2 and not any(a.startswith("install=") for a in argv):
            prefix = words[1] if len(words) == 2 else ""
            print(" ".join(n for n in SUBCOMMANDS if n.startswith(prefix)))
            return
        argv = [words[1] if len(words) > 2 else "train", *argv]
        if argv[0] in _PLAIN_COMMANDS:
            print(_complete_plain(argv[0], words[2:]))
            return
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"mmtrain: error: unknown command '{name}' (choose from: {', '.join(SUBCOMMANDS)})",
              file=sys.stderr)
        sys.exit(2)

    # Let Hydra raise instead of printing a trimmed traceback and exiting 1, so that
    # errors come out as one line here; a user who set the variable gets the traceback too.
    saved_env, saved_argv, saved_stderr = os.environ.get("HYDRA_FULL_ERROR"), sys.argv, sys.stderr
    full_error = saved_env == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    _strip_subcommand_from_completion(name)
    # Hydra names the program from argv[0]; completion must register plain `mmtrain`.
    shell_completion = "-sc" in rest or "--shell-completion" in rest
    sys.argv = ["mmtrain" if shell_completion else f"mmtrain {name}", *rest]
    if not {"-m", "--multirun"} & set(rest):
        sys.stderr = _DropHydraJobLine(sys.stderr)
    try:
        if not shell_completion:
            _check_paths(name, rest)
        entry = importlib.import_module(SUBCOMMANDS[name][0]).main
        if shell_completion and name == "eval":
            _complete_eval_keys_only(entry)
        else:
            entry()
    except KeyboardInterrupt:
        print("mmtrain: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if full_error:
            traceback.print_exc()
        # The exit code survives a full traceback: a preempted run must still say 75.
        sys.exit(_report(exc, name, rest))
    finally:
        # In-process callers (tests, notebooks) get their environment back.
        sys.argv, sys.stderr = saved_argv, saved_stderr
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


# Commands with an argparse front end rather than Hydra's: completed from their own --help.
_PLAIN_COMMANDS = ("data", "report")


def _complete_plain(command: str, words: list[str]) -> str:
    """The options and choices the command's parser offers at this point of the line (what
    argparse lists in --help), those starting with the word being typed."""
    import contextlib
    import io

    typed = [w for w in words[:-1] if w and not w.startswith("-")]
    prefix = words[-1] if words else ""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        importlib.import_module(SUBCOMMANDS[command][0]).main([*typed[:1], "--help"])
    usage = buffer.getvalue()
    offered = re.findall(r"(?<![\w-])(--[a-z][\w-]*)", usage)
    if len(typed) < 2:  # a positional may come next: its choices, e.g. {download,synth}
        choices = re.search(r"^  \{([\w,-]+)\}", usage, re.MULTILINE)
        offered += choices.group(1).split(",") if choices else []
    return " ".join(dict.fromkeys(w for w in offered if w.startswith(prefix)))


def _complete_eval_keys_only(entry: Any) -> None:
    """eval shares the config folder with train, so Hydra would offer train's groups too:
    keep the candidates that name one of eval's own keys (and hydra's)."""
    import contextlib
    import dataclasses
    import io

    from mmtrain.config import EvalConfig

    fields = dataclasses.fields(EvalConfig)
    keys = {f.name for f in fields} | {"hydra"}
    # `data` is a node of overrides there (data.root=DIR), not the train config's group.
    groups_too = {f"{f.name}=" for f in fields if str(f.type).startswith("Dict")}
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        entry()
    words = buffer.getvalue().split()
    print(" ".join(w for w in words if w not in groups_too
                   and re.split(r"[=./]", w.lstrip("+~"), maxsplit=1)[0] in keys))


# key=value arguments naming a file or folder that must exist, by command: checked before
# Hydra and torch start, so a mistyped path is answered in a fraction of a second.
_PATH_ARGS: dict[str, dict[str, str]] = {
    "eval": {"ckpt": "file", "run": "dir"},
    "train": {"trainer.resume": "any", "init_from": "any", "model.image_encoder.pretrained": "weights"},
}
_WHAT = {"file": "checkpoint", "dir": "run dir", "any": "checkpoint or run dir"}


def _check_paths(command: str, args: list[str]) -> None:
    from mmtrain.errors import CheckpointError

    for arg in args:
        key, sep, value = arg.partition("=")
        kind = _PATH_ARGS.get(command, {}).get(key.lstrip("+"))
        if not sep or kind is None or value in ("", "null", "true", "false", "True", "False"):
            continue
        if any(c in value for c in ",()[]{}$"):  # a sweep, a choice or an interpolation
            continue
        path = os.path.expanduser(value)
        if {"file": os.path.isfile, "dir": os.path.isdir}.get(kind, os.path.exists)(path):
            continue
        if kind == "weights":
            raise CheckpointError(f"{key}={value}: no such file or folder; pass a local weights "
                                  f"file, true (the library's own download) or null (random init)")
        raise CheckpointError(f"{_WHAT[kind]} not found: {value} ({key}=)")


def _report(exc: Exception, command: str = "", args: list[str] = ()) -> int:
    from mmtrain.errors import MmtrainError

    user_error = isinstance(exc, MmtrainError)
    code = exc.exit_code if isinstance(exc, MmtrainError) else 1
    # Only a command that imported Hydra or OmegaConf can raise their errors.
    config_errors = tuple(getattr(sys.modules[m].errors, c) for m, c in
                          (("hydra", "HydraException"), ("omegaconf", "OmegaConfBaseException"))
                          if m in sys.modules and hasattr(sys.modules[m], "errors"))
    if config_errors and isinstance(exc, config_errors):
        user_error, code = True, 2
    message = _one_line(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # A full disk outside the atomic writers (a log line): still one line, exit 2.
        user_error, code = True, 2
        message = f"no space left on device writing {exc.filename or 'a file'}: free some space and run again"
    if user_error and command in ("train", "eval"):
        from mmtrain.suggest import improve

        message = improve(message, command, list(args))
    if not user_error:
        message = f"{type(exc).__name__}: {message} (set HYDRA_FULL_ERROR=1 for the traceback)"
    print(f"mmtrain: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    main()
