"""Shared layers (reprodiff.nets.layers): the positional embedding of c_noise."""

from __future__ import annotations

import torch

from reprodiff.nets.layers import PositionalEmbedding


def test_positional_embedding_spans_both_c_noise_conventions() -> None:
    emb = PositionalEmbedding(8)
    out = emb(torch.tensor([0.0, 999.0]))
    assert out.shape == (2, 8)
    torch.testing.assert_close(out[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos 0, sin 0
    freqs = torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3), 1e-4])  # endpoint=True
    torch.testing.assert_close(out[1, 4:], torch.sin(999.0 * freqs))
