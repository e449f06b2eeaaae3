"""`mmtrain export ckpt=PATH format=onnx|torchscript out=DIR`: the inference graphs, alone.

What is exported follows the checkpoint's task, each graph with a dynamic batch axis:
- classification: `classifier` (image, ids, lengths -> logits, probabilities);
- contrastive: `image_encoder` (image -> image_embeds) and `text_encoder` (ids, lengths ->
  text_embeds), both L2-normalized: similarity = dot product, times `logit_scale`;
- captioning: `image_encoder` (image -> memory) and `decoder_step` (ids, memory ->
  log_probs of the next token), for a greedy or beam search loop of your own.
Images enter as uint8 N x C x H x W: the graphs normalize them as training did. Beside the
graphs: `tokenizer.json` (Hugging Face `tokenizers`, padding and truncation set) and
`preprocess.json` (size, colour mode, resize interpolation, mean, std, max length, class names, special ids).

Every graph is checked at export time against PyTorch on inputs of another batch size and
text length than it was traced with (real files with image=/text_file=): the largest
absolute difference is printed and must be below 1e-4 (fp32). For ONNX the TorchScript-based
exporter is tried first (fast; it also handles the packed RNN text encoders) and
torch.export-based one next; a graph neither exports faithfully is refused in one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import hydra
from omegaconf import DictConfig

from mmtrain.config import config_dir, register_schemas
from mmtrain.errors import ConfigError, MmtrainError

if TYPE_CHECKING:
    from mmtrain.inference import Loaded

TOLERANCE = 1e-4
FORMATS = ("onnx", "torchscript")


class ExportError(MmtrainError):
    """A graph that cannot be exported faithfully in the asked format."""


def main() -> None:
    register_schemas()
    hydra.main(config_path=config_dir(), config_name="export", version_base="1.3")(run)()


@dataclass
class Graph:
    name: str
    module: Any
    """An nn.Module whose forward takes the inputs, in order, and returns a tuple of outputs."""
    inputs: list[str]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]
    """Input name -> {axis: dimension name}: batch everywhere, text length where it varies."""
    parts: str
    """Which encoders/fusion it holds, for an error message."""
    max_length: dict[str, int] = field(default_factory=dict)
    """Dimension name -> largest value (positions a model has)."""


def _graphs(loaded: Loaded) -> list[Graph]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    model, task, kind = loaded.model, loaded.task, loaded.kind
    cfg = loaded.config.model
    image_name = str(cfg.image_encoder._target_).rsplit(".", 1)[-1]
    text_name = str(cfg.text_encoder._target_).rsplit(".", 1)[-1]
    fusion_name = str(cfg.fusion._target_).rsplit(".", 1)[-1]
    batch = {0: "batch"}
    text_axes = {"ids": {0: "batch", 1: "length"}, "lengths": batch}
    limit = {"length": loaded.tokenizer.max_length}

    if kind == "classification":
        class Classifier(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, image: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> tuple:
                logits = task.logits(self.model, {"image": image, "text": ids, "text_lengths": lengths}).float()
                return logits, logits.softmax(-1)

        return [Graph("classifier", Classifier(), ["image", "ids", "lengths"], ["logits", "probabilities"],
                      {"image": batch, **text_axes}, f"{image_name} + {text_name} + {fusion_name}", limit)]
    if kind == "contrastive":
        class ImageEmbeds(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, image: torch.Tensor) -> tuple:
                return (task.embed_image(self.model, image),)

        class TextEmbeds(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple:
                return (task.embed_text(self.model, ids, lengths),)

        return [Graph("image_encoder", ImageEmbeds(), ["image"], ["image_embeds"], {"image": batch}, image_name),
                Graph("text_encoder", TextEmbeds(), ["ids", "lengths"], ["text_embeds"], text_axes, text_name, limit)]
    decoder = model.heads[task.name]

    class Memory(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.decoder = model, decoder

        def forward(self, image: torch.Tensor) -> tuple:
            return (self.decoder.memory(self.model.encode_image(image).tokens),)

    class DecoderStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(self, ids: torch.Tensor, memory: torch.Tensor) -> tuple:
            return (F.log_softmax(self.decoder(ids, memory)[:, -1].float(), dim=-1),)

    return [Graph("image_encoder", Memory(), ["image"], ["memory"], {"image": batch}, image_name),
            Graph("decoder_step", DecoderStep(), ["ids", "memory"], ["log_probs"],
                  {"ids": {0: "batch", 1: "length"}, "memory": batch}, "the caption decoder",
                  {"length": task.max_length})]


# ---- inputs ------------------------------------------------------------------------------

def sample_inputs(loaded: Loaded, n: int, length: int, images: Any = None, texts: Sequence[str] = (),
                  seed: int = 0) -> dict[str, Any]:
    """n images (the given ones, else seeded random pixels) and n texts (the given ones, else
    sentences of vocabulary words), tokenized as in training; every name a graph may take."""
    import torch

    g = torch.Generator().manual_seed(seed)
    info = loaded.info
    if images is None:
        images = torch.randint(0, 256, (n, info.image_channels, info.image_size, info.image_size),
                               generator=g, dtype=torch.uint8)
    tok = loaded.tokenizer
    if not texts:
        vocab = [w for w, i in sorted(tok.tokenizer.get_vocab().items(), key=lambda kv: kv[1]) if i >= 4]
        sizes = torch.randint(1, max(2, length) + 1, (n,), generator=g).tolist()
        sizes[0] = length  # one text as long as asked, so the graphs see that length
        texts = [" ".join(vocab[int(j)] for j in torch.randint(0, len(vocab), (k,), generator=g)) for k in sizes]
    texts = [texts[i % len(texts)] for i in range(n)]
    ids, lengths = tok.encode(list(texts))
    ids = ids[:, : int(lengths.max())]
    out = {"image": images[:n], "ids": ids, "lengths": lengths}
    if loaded.kind == "captioning":
        bos = torch.full((n, 1), tok.bos_id, dtype=torch.long)
        out["ids"] = torch.cat([bos, ids[:, : max(1, length - 1)]], dim=1)
        decoder = loaded.model.heads[loaded.task.name]
        with torch.no_grad():
            out["memory"] = decoder.memory(loaded.model.encode_image(out["image"]).tokens)
    return out


def _reference(graph: Graph, inputs: dict[str, Any]) -> list[Any]:
    import torch

    with torch.no_grad():
        return [t.numpy() for t in graph.module(*(inputs[k] for k in graph.inputs))]


def _max_diff(got: Sequence[Any], want: Sequence[Any]) -> float:
    import numpy as np

    return max(float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())
               for a, b in zip(got, want))


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporters print progress, graph dumps and deprecation notes, some from C++ straight
    to file descriptors 1 and 2; the user wants one summary line per graph."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            for fd in saved:
                os.dup2(devnull.fileno(), fd)
            yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).replace("\x1b", "").split())
    return f"{type(e).__name__}: {text[:160]}"


def _onnx(graph: Graph, path: Path, example: dict[str, Any], check: dict[str, Any]) -> tuple[float, str]:
    import torch

    try:
        import onnx  # noqa: F401 (the exporters need it)
        import onnxruntime as ort
    except ImportError:
        raise ExportError('format=onnx needs onnx and onnxruntime: pip install "mmtrain[export]"') from None

    args = tuple(example[k] for k in graph.inputs)
    want = _reference(graph, check)
    tried = []
    for exporter in ("torchscript", "dynamo"):
        try:
            with _quiet():
                if exporter == "torchscript":
                    axes = {**graph.dynamic, **{o: {0: "batch"} for o in graph.outputs}}
                    torch.onnx.export(graph.module, args, str(path), dynamo=False, input_names=graph.inputs,
                                      output_names=graph.outputs, dynamic_axes=axes, opset_version=17)
                else:
                    dims = {name: torch.export.Dim(name, min=1, max=graph.max_length.get(name, 1 << 20))
                            for axes in graph.dynamic.values() for name in axes.values()}
                    shapes = {k: {a: dims[d] for a, d in graph.dynamic.get(k, {}).items()} or None
                              for k in graph.inputs}
                    torch.onnx.export(graph.module, args, str(path), dynamo=True, input_names=graph.inputs,
                                      output_names=graph.outputs, dynamic_shapes=shapes, optimize=True)
                session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                got = session.run(graph.outputs, {k: check[k].numpy() for k in graph.inputs})
            diff = _max_diff(got, want)
        except Exception as e:  # each exporter fails its own way; the message says which and why
            tried.append(f"{exporter}-based exporter: {_first_line(e)}")
            continue
        if diff < TOLERANCE:
            return diff, exporter
        tried.append(f"{exporter}-based exporter: max abs diff {diff:.2e} at another batch size/length")
    raise ExportError(f"{graph.name} ({graph.parts}) cannot be exported to ONNX faithfully: {'; '.join(tried)}")


def _torchscript(graph: Graph, path: Path, example: dict[str, Any], check: dict[str, Any]) -> tuple[float, str]:
    import torch

    want = _reference(graph, check)
    try:
        with _quiet():
            traced = torch.jit.trace(graph.module, tuple(example[k] for k in graph.inputs), check_trace=False)
            traced.save(str(path))
            module = torch.jit.load(str(path))
            with torch.no_grad():
                got = [t.numpy() for t in module(*(check[k] for k in graph.inputs))]
        diff = _max_diff(got, want)
    except Exception as e:
        raise ExportError(f"{graph.name} ({graph.parts}) cannot be traced to TorchScript: {_first_line(e)}: "
                          f"try format=onnx") from None
    if diff >= TOLERANCE:
        raise ExportError(f"{graph.name} ({graph.parts}) traced to TorchScript differs from PyTorch by {diff:.2e} "
                          f"at another batch size or text length (shapes fixed at trace time): try format=onnx")
    return diff, "torch.jit.trace"


EXPORTERS: dict[str, tuple[str, Callable[..., tuple[float, str]]]] = {
    "onnx": (".onnx", _onnx), "torchscript": (".pt", _torchscript)}


def tokenizer_json(loaded: Loaded) -> str:
    """The checkpoint's tokenizer, padding and cutting to max_length by itself, as tokenizer.json."""
    from tokenizers import Tokenizer

    from mmtrain.data.tokenizer import PAD

    tok = Tokenizer.from_str(loaded.tokenizer.tokenizer.to_str())
    tok.enable_truncation(loaded.tokenizer.max_length)
    tok.enable_padding(pad_id=loaded.tokenizer.pad_id, pad_token=PAD)
    return tok.to_str(pretty=True)


def preprocess_json(loaded: Loaded, graphs: dict[str, Any]) -> dict[str, Any]:
    info, tok, task = loaded.info, loaded.tokenizer, loaded.task
    out: dict[str, Any] = {
        "task": loaded.kind,
        "checkpoint": str(loaded.path),
        "graphs": graphs,
        "image": {"size": info.image_size, "channels": info.image_channels,
                  "mode": "L" if info.image_channels == 1 else "RGB",
                  "resize": "shorter side to size (antialiased), then center crop to size x size",
                  "interpolation": info.interpolation,
                  "input": "uint8, N x C x size x size; the graphs scale by 1/255 and normalize themselves",
                  "mean": list(loaded.model.image_mean.flatten().tolist()),
                  "std": list(loaded.model.image_std.flatten().tolist())},
        "text": {"max_length": tok.max_length, "pad_id": tok.pad_id, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
                 "lengths": "number of real tokens per row (the attention mask's sum); at least 1"},
    }
    if loaded.kind == "classification":
        out["class_names"] = list(task.class_names)
    elif loaded.kind == "contrastive":
        out["logit_scale"] = float(task.logit_scale(loaded.model))
    else:
        out["decode_length"] = int(task.decode_length)
    return out


def export(loaded: Loaded, fmt: str, out: Path, images: Any = None, texts: Sequence[str] = ()) -> dict[str, Any]:
    """Write graphs, tokenizer.json and preprocess.json into `out` (new or empty), all checked."""
    suffix, exporter = EXPORTERS[fmt]
    graphs = _graphs(loaded)
    length = min(loaded.tokenizer.max_length, 6)
    example = sample_inputs(loaded, 2, length, seed=1)
    n_check = 3 if images is None else images.shape[0]
    check = sample_inputs(loaded, n_check, min(loaded.tokenizer.max_length, length + 3), images, texts, seed=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        report = {}
        for graph in graphs:
            diff, how = exporter(graph, tmp / f"{graph.name}{suffix}", example, check)
            report[graph.name] = {"file": f"{graph.name}{suffix}", "inputs": graph.inputs, "outputs": graph.outputs,
                                  "parity_max_abs_diff": diff, "exporter": how}
        (tmp / "tokenizer.json").write_text(tokenizer_json(loaded), encoding="utf-8")
        (tmp / "preprocess.json").write_text(json.dumps(preprocess_json(loaded, report), indent=2) + "\n",
                                             encoding="utf-8")
        if out.exists():
            out.rmdir()  # checked empty by the caller; a non-empty one makes this fail loudly
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def run(cfg: DictConfig) -> None:
    from mmtrain.inference import find_images, image_batches, load_for_inference, read_texts

    if not cfg.ckpt or not cfg.out:
        raise ConfigError("usage: mmtrain export ckpt=PATH format=onnx|torchscript out=DIR")
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r}: choose {' or '.join(FORMATS)}")
    out = Path(cfg.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out={cfg.out} exists and is not an empty folder: choose a new one (nothing was written)")
    texts = read_texts(None, cfg.text_file)
    loaded = load_for_inference(cfg.ckpt, device="cpu", allow_targets=list(cfg.allow_targets),
                                trust_config=cfg.trust_config)
    loaded.require("export", "classification", "contrastive", "captioning")
    images = None
    if cfg.image:
        batch = next(image_batches(find_images(cfg.image)[:16], loaded.info, 16))
        if batch.errors:
            raise ExportError(batch.errors[0][1])
        images = batch.images
    report = export(loaded, cfg.format, out, images, texts)
    for name, r in report.items():
        print(f"{r['file']:<20} parity max abs diff {r['parity_max_abs_diff']:.2e} (< {TOLERANCE:.0e} required)"
              f"  [{r['exporter']}]")
    print(f"exported to {out}: {', '.join(r['file'] for r in report.values())}, tokenizer.json, preprocess.json")
