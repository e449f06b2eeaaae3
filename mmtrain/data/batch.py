"""In-memory datasets that hand the DataLoader whole batches, and the collate that pads text.

A batch is a plain dict: image (uint8 B x C x H x W), text (long B x T, padded),
text_lengths (long B) and one long tensor per label (label, digit, ...).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset


class InMemoryDataset(Dataset):
    """Tensors indexed together; `__getitems__` serves a batch with one gather per tensor."""

    def __init__(self, images: torch.Tensor, text: torch.Tensor, text_lengths: torch.Tensor,
                 **labels: torch.Tensor) -> None:
        n = images.shape[0]
        for name, t in [("text", text), ("text_lengths", text_lengths), *labels.items()]:
            if t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} rows, images have {n}")
        self.tensors = {"image": images, "text": text, "text_lengths": text_lengths, **labels}

    def __len__(self) -> int:
        return self.tensors["image"].shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v.index_select(0, idx) for k, v in self.tensors.items()}


def collate(samples: Any) -> dict[str, torch.Tensor]:
    """Stack samples (or take a pre-gathered batch) and trim text padding to the longest row."""
    if isinstance(samples, dict):
        batch = samples
    else:
        batch = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            if key == "text":
                batch[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True)
            else:
                batch[key] = torch.stack([torch.as_tensor(v) for v in values])
    longest = int(batch["text_lengths"].max())
    batch["text"] = batch["text"][:, :longest]
    return batch
