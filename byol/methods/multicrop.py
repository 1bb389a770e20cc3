"""Crops of one size through the encoder together, as SwAV's and DINO's official code run them."""

from __future__ import annotations

import torch
from torch import nn


def encode_by_size(encoder: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """The encoder's output for each view, with every run of same-sized views in one call (so batch-norm
    statistics are over the two global crops together, and over the local crops together)."""
    outputs, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        outputs.extend(encoder(torch.cat(views[start:end])).chunk(end - start))
        start = end
    return outputs
