"""Text encoders: token ids B x T (+ lengths B) -> EncoderOutput."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmtrain.data.tokenizer import TextTokenizer, pretrained_tokenizer
from mmtrain.errors import CheckpointError, ConfigError
from mmtrain.models import EncoderOutput, TextEncoder, openclip


def _padding_mask(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """B x T bool, True where a token is real."""
    return torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


def _reverse_within(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """B x T time index that reverses each sequence's real tokens and leaves its padding in
    place (its own inverse)."""
    t = torch.arange(steps, device=lengths.device)[None, :]
    last = lengths[:, None] - 1
    return torch.where(t <= last, last - t, t)


def _time_gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))


class _RNNEncoder(TextEncoder):
    """A (bi)RNN whose outputs on the real tokens do not depend on the padding after them.

    On CUDA the sequences are packed (cuDNN skips the padding). Elsewhere packing is
    slow and grows faster than linearly with length (a bidirectional GRU at 256 tokens,
    batch 128: 18 s forward + backward packed, 2.4 s padded, on one CPU thread), so each
    direction runs over the padded batch instead: the forward direction reads the padding
    only after the real tokens, and the backward direction runs forward over each
    sequence reversed within its own length, so it too meets the padding last. Outputs on
    padding are zeroed, as unpacking does. Same parameters either way (`self.rnn`).
    """

    rnn_class: type[nn.RNNBase]
    _run: staticmethod  # torch.gru / torch.lstm: what nn.GRU / nn.LSTM call for one layer stack

    def __init__(self, vocab_size: int, pad_id: int = 0, embed_dim: int = 64,
                 hidden_dim: int = 128, num_layers: int = 1, bidirectional: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.rnn = self.rnn_class(embed_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                                  bidirectional=bidirectional,
                                  dropout=dropout if num_layers > 1 else 0.0)
        self.out_dim = hidden_dim * (2 if bidirectional else 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        mask = _padding_mask(ids, lengths)
        x = self.embed(ids)
        tokens = self._packed(x, lengths) if x.is_cuda else self._padded(x, lengths) * mask[..., None]
        return EncoderOutput(pooled=_masked_mean(tokens, mask), tokens=tokens, mask=mask)

    def _packed(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Packing needs the lengths on the CPU: one sync per forward.
        packed = pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]

    def _padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        rnn = self.rnn
        directions = 2 if rnn.bidirectional else 1
        reverse = _reverse_within(lengths, x.shape[1]) if directions == 2 else None
        per_direction = len(rnn._flat_weights) // (rnn.num_layers * directions)
        state = x.new_zeros(1, x.shape[0], rnn.hidden_size)
        initial = (state, state) if isinstance(rnn, nn.LSTM) else state
        for layer in range(rnn.num_layers):
            if layer:
                x = F.dropout(x, rnn.dropout, self.training)
            outputs = []
            for d in range(directions):
                first = (layer * directions + d) * per_direction
                weights = rnn._flat_weights[first : first + per_direction]
                inputs = _time_gather(x, reverse) if d else x
                out = self._run(inputs, initial, weights, rnn.bias, 1, 0.0, self.training, False, True)[0]
                outputs.append(_time_gather(out, reverse) if d else out)
            x = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
        return x


class GRUEncoder(_RNNEncoder):
    """A (bi)GRU over word embeddings; pooled = mean over the real tokens."""

    rnn_class = nn.GRU
    _run = staticmethod(torch.gru)


class LSTMEncoder(_RNNEncoder):
    """A (bi)LSTM over word embeddings; pooled = mean over the real tokens."""

    rnn_class = nn.LSTM
    _run = staticmethod(torch.lstm)


class TransformerEncoder(TextEncoder):
    """A pre-norm Transformer encoder with learned positions; padding is masked out of attention
    and of the pooled mean, so a text's output does not depend on how much padding follows it."""

    def __init__(self, vocab_size: int, pad_id: int = 0, dim: int = 128, depth: int = 2,
                 heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 max_length: int = 256) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model.text_encoder: dim={dim} must be a multiple of heads={heads}")
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        # Words and positions start at the same scale, so neither drowns the other.
        nn.init.normal_(self.embed.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        self.pos = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.max_length = max_length
        self.out_dim = dim

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        if ids.shape[1] > self.max_length:
            raise ConfigError(f"text of {ids.shape[1]} tokens is longer than model.text_encoder."
                              f"max_length={self.max_length}: raise it to at least the tokenizer's "
                              f"max_length")
        mask = _padding_mask(ids, lengths)
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        tokens = self.norm(self.layers(x, src_key_padding_mask=~mask))
        return EncoderOutput(pooled=_masked_mean(tokens, mask), tokens=tokens, mask=mask)


class BowEncoder(TextEncoder):
    """Mean of word embeddings (bag of words): the fast baseline, blind to word order."""

    def __init__(self, vocab_size: int, pad_id: int = 0, dim: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.out_dim = dim

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        mask = _padding_mask(ids, lengths)
        tokens = self.embed(ids)
        return EncoderOutput(pooled=_masked_mean(tokens, mask), tokens=tokens, mask=mask)


POOLINGS = ("cls", "mean", "pooler")
_BLOCK = re.compile(r"\.(?:layer|layers|block|blocks|h)\.(\d+)\.")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def hf_source(name: str, what: str = "model.text_encoder") -> str:
    """A local folder as an absolute path, else a hub id; a path that does not exist is refused
    here, so it is never mistaken for a hub id and looked up online."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder.resolve())
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ConfigError(f"{what}.name={name}: no such folder (a local model is a folder written "
                          f"by save_pretrained, with config.json)")
    return name


def _load_hf_model(name: str, pretrained: bool, model_config: Optional[str]) -> nn.Module:
    """AutoModel from a stored architecture (JSON), or from `name` with or without its weights.
    Weights that leave any tensor but the pooler at random init are refused, not warned about."""
    import transformers
    from transformers import AutoConfig, AutoModel

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # our one line replaces its load report
    transformers.logging.disable_progress_bar()
    try:
        if model_config is not None:
            arch = json.loads(model_config)
            return AutoModel.from_config(AutoConfig.for_model(arch.pop("model_type"), **arch))
        if not pretrained:
            return AutoModel.from_config(AutoConfig.from_pretrained(hf_source(name)))
        net, info = AutoModel.from_pretrained(hf_source(name), trust_remote_code=False,
                                              output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        reason = ("tensors of another shape than its config.json says" if "mismatched" in str(e)
                  else _first_line(e))
        raise CheckpointError(f"model.text_encoder.name={name}: cannot load a transformers "
                              f"model from it ({reason})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", ()) if "pooler" not in k]
    misshapen = [k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", ())]
    if missing or misshapen:
        first = (missing or misshapen)[0]
        raise CheckpointError(f"model.text_encoder.name={name}: its weights do not fit its config.json "
                              f"({len(missing)} tensors missing, {len(misshapen)} of another shape, "
                              f"e.g. {first})")
    return net


class HFTextEncoder(TextEncoder):
    """Any Hugging Face `transformers` encoder (BERT, RoBERTa, DistilBERT, MiniLM, a CLIP text
    tower, ...) by hub id or local folder, with its own tokenizer (see `load_tokenizer`).

    `pretrained=true` loads the weights through transformers' `from_pretrained` (its hub cache,
    HF_HUB_OFFLINE honoured); false builds the architecture with random weights. Tokens =
    last_hidden_state with the padding mask; pooled = the first token (cls), the mean over
    the real tokens (mean), or the model's own pooler output (pooler). `model_config` is the
    architecture as JSON: the checkpoint stores it (`architecture()`), so `mmtrain eval`
    rebuilds the model without the folder or the hub.
    """

    def __init__(self, name: str, vocab_size: int, pad_id: int = 0, pretrained: bool = True,
                 pooling: str = "mean", grad_checkpointing: bool = False, dim: Optional[int] = None,
                 model_config: Optional[str] = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.text_encoder.pooling={pooling!r}: choose {', '.join(POOLINGS)}")
        self.name, self.pooling = name, pooling
        net = _load_hf_model(name, pretrained, model_config)
        # A dual-tower checkpoint (CLIP) brings both towers: keep the text one.
        self.net = net.text_model if hasattr(net, "text_model") and hasattr(net, "vision_model") else net
        self.hf_config = net.config
        text_config = getattr(net.config, "text_config", net.config)
        embeddings = self.net.get_input_embeddings().num_embeddings
        if vocab_size > embeddings:
            raise ConfigError(f"model.text_encoder.name={name} embeds {embeddings} token ids but the "
                              f"data's tokenizer has {vocab_size}: the text must be tokenized with "
                              f"this model's own tokenizer")
        self.max_positions = getattr(text_config, "max_position_embeddings", None)
        self.depth = int(getattr(text_config, "num_hidden_layers", 0) or 0)
        if grad_checkpointing:  # renamed in transformers 5; the old name warns there
            enable = getattr(self.net, "activation_checkpointing_enable", None)
            (enable or self.net.gradient_checkpointing_enable)()
        width = int(getattr(text_config, "hidden_size", 0) or getattr(text_config, "dim"))
        self.proj = nn.Linear(width, dim) if dim else nn.Identity()
        self.out_dim = dim or width

    @staticmethod
    def load_tokenizer(name: str, max_length: int, **_: Any) -> TextTokenizer:
        """The model's own fast tokenizer: the data pipeline tokenizes with it."""
        return pretrained_tokenizer(hf_source(name), max_length)

    def architecture(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this module with no file and no download."""
        return {"model_config": self.hf_config.to_json_string(use_diff=False), "pretrained": False}

    def layer_ids(self) -> dict[str, int]:
        """Parameter name -> depth for layer-wise lr decay, as timm groups its models: embeddings
        0, block i -> i + 1, and what follows the last block (final norm, pooler) with it."""
        ids = {}
        for name, _ in self.named_parameters():
            block = _BLOCK.search(name)
            ids[name] = int(block.group(1)) + 1 if block else 0 if "embed" in name else self.depth
        return ids

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        if self.max_positions and ids.shape[1] > self.max_positions:
            raise ConfigError(f"text of {ids.shape[1]} tokens is longer than {self.name} accepts "
                              f"({self.max_positions}): lower data.tokenizer_options.max_length")
        mask = _padding_mask(ids, lengths)
        out = self.net(input_ids=ids, attention_mask=mask.long())
        tokens = self.proj(out.last_hidden_state)
        if self.pooling == "cls":
            pooled = tokens[:, 0]
        elif self.pooling == "mean":
            pooled = _masked_mean(tokens, mask)
        else:
            pooler = getattr(out, "pooler_output", None)
            if pooler is None:
                raise ConfigError(f"model.text_encoder.pooling=pooler: {self.name} has no pooler; "
                                  f"use cls or mean")
            pooled = self.proj(pooler)
        return EncoderOutput(pooled=pooled, tokens=tokens, mask=mask)


class OpenCLIPTextEncoder(TextEncoder):
    """The text tower of an open_clip model (same names and weights as
    `model/image_encoder=open_clip`; see mmtrain/models/openclip.py), with open_clip's tokenizer
    (CLIP's BPE, or the model's Hugging Face one) as the data's tokenizer.

    Texts are laid out as open_clip lays them out (padded with the model's pad id to its
    context length), so pooled = open_clip's `encode_text` (projected, not normalized);
    tokens = the final-norm token states through the same projection, with the padding mask.
    """

    def __init__(self, name: str, vocab_size: int, pad_id: int = 0,
                 pretrained: Any = None, grad_checkpointing: bool = False,
                 model_config: Optional[str] = None) -> None:
        super().__init__()
        # At the model's own image size: the data's does not change the text tower.
        model, self.model_config = openclip.load(name, pretrained, model_config, None,
                                                  "model.text_encoder")
        self.name = name
        self.text = model.text
        self.joint_space = openclip.joint_space(model)
        if vocab_size > self.text.vocab_size:
            raise ConfigError(f"model.text_encoder.name={name} embeds {self.text.vocab_size} token ids but "
                              f"the data's tokenizer has {vocab_size}: the text must be tokenized with "
                              f"this model's own tokenizer")
        self.text.output_tokens = True
        if grad_checkpointing:
            self.text.set_grad_checkpointing(True)
        self.context_length = int(self.text.context_length)
        self.out_dim = self.joint_space["embed_dim"]

    @staticmethod
    def load_tokenizer(name: str, max_length: int, **_: Any) -> TextTokenizer:
        """open_clip's tokenizer for the model: the data pipeline tokenizes with it."""
        return openclip.tokenizer(name, max_length, "model.text_encoder")

    def architecture(self) -> dict[str, Any]:
        """The open_clip config: rebuilds the tower with no name lookup and no download."""
        return {"model_config": self.model_config, "pretrained": None}

    def layer_ids(self) -> dict[str, int]:
        """Parameter name -> depth for layer-wise lr decay (as OpenCLIPImageEncoder's)."""
        return openclip.resblock_ids(self.named_parameters())

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        steps = ids.shape[1]
        if steps > self.context_length:
            raise ConfigError(f"text of {steps} tokens is longer than {self.name} accepts "
                              f"({self.context_length}): lower data.tokenizer_options.max_length")
        mask = _padding_mask(ids, lengths)
        text = ids.new_full((ids.shape[0], self.context_length), self.text.pad_id)
        text[:, :steps] = ids.masked_fill(~mask, self.text.pad_id)
        pooled, tokens = self.text(text)
        tokens = openclip.project_tokens(tokens[:, :steps], self.text.text_projection, pooled.shape[-1])
        if tokens is None:
            tokens, mask = pooled[:, None], mask[:, :1]
        return EncoderOutput(pooled=pooled, tokens=tokens, mask=mask)
