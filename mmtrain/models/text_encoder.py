"""Text encoders: token ids B x T (+ lengths B) -> EncoderOutput."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmtrain.errors import ConfigError
from mmtrain.models import EncoderOutput


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


class _RNNEncoder(nn.Module):
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


class TransformerEncoder(nn.Module):
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


class BowEncoder(nn.Module):
    """Mean of word embeddings (bag of words): the fast baseline, blind to word order."""

    def __init__(self, vocab_size: int, pad_id: int = 0, dim: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.out_dim = dim

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        mask = _padding_mask(ids, lengths)
        tokens = self.embed(ids)
        return EncoderOutput(pooled=_masked_mean(tokens, mask), tokens=tokens, mask=mask)
