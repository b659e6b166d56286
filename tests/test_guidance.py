"""Classifier-free guidance (``guidance.py``)."""

from __future__ import annotations

import pytest
import torch

from reprodiff.guidance import ClassifierFreeGuidance
from reprodiff.nets import make_net
from tiny_models import TINY


def test_guidance_limits() -> None:
    torch.manual_seed(0)
    net = make_net("unet", img_resolution=8, in_channels=1, num_classes=3,
                   **{k: v for k, v in TINY.items() if k != "name"})
    from reprodiff.kernels import EDM
    from reprodiff.precond import Precond

    D = Precond(net, EDM()).eval()
    x, s, c = torch.randn(5, 1, 8, 8), torch.full((5,), 1.3), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        assert torch.equal(ClassifierFreeGuidance(D, 1.0)(x, s, c), D(x, s, c))
        assert torch.equal(ClassifierFreeGuidance(D, 0.0)(x, s, c), D(x, s, torch.full_like(c, -1)))
        w3 = ClassifierFreeGuidance(D, 3.0)(x, s, c)
        u, k = D(x, s, torch.full_like(c, -1)), D(x, s, c)
        assert torch.allclose(w3, u + 3 * (k - u), atol=1e-5)
    for bad in (float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="finite"):
            ClassifierFreeGuidance(D, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a condition"):
        ClassifierFreeGuidance(D, 2.0)(x, s, None)
