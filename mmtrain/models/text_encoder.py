"""Text encoders: token ids B x T (+ lengths B) -> EncoderOutput."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmtrain.models import EncoderOutput


class _RNNEncoder(nn.Module):
    rnn_class: type[nn.RNNBase]

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
        # Packing skips the padding entirely; it needs the lengths on the CPU.
        packed = pack_padded_sequence(self.embed(ids), lengths.cpu().clamp(min=1),
                                      batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        tokens, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return EncoderOutput(pooled=pooled, tokens=tokens, mask=mask)


class GRUEncoder(_RNNEncoder):
    """A (bi)GRU over word embeddings; pooled = mean over the real tokens."""

    rnn_class = nn.GRU


class LSTMEncoder(_RNNEncoder):
    """A (bi)LSTM over word embeddings; pooled = mean over the real tokens."""

    rnn_class = nn.LSTM
