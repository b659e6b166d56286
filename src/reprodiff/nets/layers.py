"""Blocks shared by the networks: noise/class embeddings, attention, init and config checks.

Networks know nothing about diffusion: ``c_noise`` is one real number per sample (``0.25 log sigma``
in roughly ``[-2, 1.5]`` or a timestep ``(M - 1) t`` in ``[0, 999]``) and ``cond`` an optional
``int64`` class label per sample, ``-1`` (or ``cond=None``) meaning "no label".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AugmentEmbedding",
    "ConditionEmbedding",
    "PositionalEmbedding",
    "SelfAttention",
    "centred_padding",
    "check_dropout",
    "check_int_fields",
    "check_net_inputs",
    "check_positive",
    "crop_centred",
    "group_norm",
    "label_indices",
    "pad_centred",
    "scale_init_",
    "to_int_tuple",
    "trunc_normal_init_",
]


# --------------------------------------------------------------------------- config checks


def check_positive(net: str, **values: int | float) -> None:
    """Raise a one-line ``ValueError`` unless every value is a number > 0 (ints must be ints)."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{net}: {name} must be a positive number, got {v!r}")


def check_dropout(net: str, dropout: float) -> None:
    """Raise a one-line ``ValueError`` unless ``0 <= dropout < 1``."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"{net}: dropout must be in [0, 1), got {dropout!r}")


def to_int_tuple(net: str, name: str, value: Sequence[int] | int) -> tuple[int, ...]:
    """``value`` as a tuple of ints (JSON-loaded configs give lists); ``ValueError`` otherwise."""
    items = (value,) if isinstance(value, int) else value
    try:
        out = tuple(items)
    except TypeError:
        raise ValueError(f"{net}: {name} must be a sequence of ints, got {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in out):
        raise ValueError(f"{net}: {name} must be a sequence of ints, got {value!r}")
    return out


def check_int_fields(net: str, obj: object, names: Sequence[str]) -> None:
    """Raise a one-line ``ValueError`` unless the named fields of ``obj`` are ints (not bools)."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{net}: {name} must be an int, got {v!r}")


# --------------------------------------------------------------------------- input checks


def check_net_inputs(
    net: str, x: Tensor, c_noise: Tensor, in_channels: int, img_resolution: int
) -> None:
    """One-line ``ValueError`` unless ``x`` is ``[B, C, R, R]`` and ``c_noise`` is ``[B]``."""
    want = (in_channels, img_resolution, img_resolution)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ValueError(f"{net}: x_in must have shape [B, {', '.join(map(str, want))}], "
                         f"got {list(x.shape)}")
    if c_noise.shape != (x.shape[0],):
        raise ValueError(f"{net}: c_noise must have shape [B] = [{x.shape[0]}], "
                         f"got {list(c_noise.shape)}")


_NOT_LABELS = (torch.bool, torch.complex64, torch.complex128)


def label_indices(net: str, cond: Tensor | None, num_classes: int, batch: int,
                  device: torch.device) -> Tensor | None:
    """Rows of the ``num_classes + 1`` label table: ``cond`` with -1 or None -> ``num_classes``.

    Returns ``None`` for a net built without classes (then ``cond`` must be ``None``).
    """
    if num_classes == 0:
        if cond is not None:
            raise ValueError(f"{net} was built without classes (num_classes=0); pass cond=None "
                             "or build it with num_classes > 0")
        return None
    if cond is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if cond.shape != (batch,) or cond.dtype.is_floating_point or cond.dtype in _NOT_LABELS:
        raise ValueError(f"{net}: cond must be integer class labels of shape [B] = [{batch}], "
                         f"got {cond.dtype} {list(cond.shape)}")
    if bool(((cond < -1) | (cond >= num_classes)).any()):
        raise ValueError(f"{net}: class labels must be in [-1, {num_classes - 1}] (-1 = no label)")
    cond = cond.to(device=device, dtype=torch.long)
    return torch.where(cond < 0, torch.full_like(cond, num_classes), cond)  # [B]


# --------------------------------------------------------------------------- padding to a side the net can take


def centred_padding(size: int, multiple: int) -> tuple[int, int]:
    """Zero rows (and columns) before and after a side of ``size`` that make it the next multiple of ``multiple``,
    centred: 13 to a multiple of 4 -> (1, 2). ``(0, 0)`` where ``size`` is one already."""
    extra = -size % multiple
    return extra // 2, extra - extra // 2


def pad_centred(x: Tensor, pad: tuple[int, int]) -> Tensor:
    """``x [B, C, R, R]`` zero-padded by ``pad`` (:func:`centred_padding`) on each side -> ``[B, C, S, S]``."""
    lo, hi = pad
    return F.pad(x, (lo, hi, lo, hi)) if lo or hi else x


def crop_centred(x: Tensor, pad: tuple[int, int], size: int) -> Tensor:
    """Undo :func:`pad_centred`: the ``size x size`` image of ``x [B, C, S, S]`` -> ``[B, C, size, size]``."""
    lo, hi = pad
    return x[:, :, lo : lo + size, lo : lo + size] if lo or hi else x


# --------------------------------------------------------------------------- init and norms


def scale_init_(module: nn.Module, scale: float) -> nn.Module:
    """Multiply ``module.weight`` by ``scale``, zero its bias (EDM's ``init_zero`` uses 1e-5)."""
    with torch.no_grad():
        module.weight.mul_(scale)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
    return module


def group_norm(channels: int, max_groups: int = 32, min_per_group: int = 4) -> nn.GroupNorm:
    """GroupNorm with the most groups <= ``min(max_groups, channels // min_per_group)`` dividing
    ``channels`` (Karras et al. 2022, ``networks.GroupNorm``, made divisor-safe)."""
    limit = max(1, min(max_groups, channels // min_per_group))
    groups = max(g for g in range(1, limit + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


# --------------------------------------------------------------------------- embeddings


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding ``[cos(c f_k), sin(c f_k)]``, ``f_k = max_positions**(-k / (n/2 - 1))``.

    Karras et al. 2022, ``networks.PositionalEmbedding`` with ``endpoint=True``: frequencies from 1
    down to ``1 / max_positions``, resolving ``c_noise`` in ``[-2, 1.5]`` and in ``[0, 999]`` alike.
    """

    def __init__(self, num_channels: int, max_positions: int = 10000) -> None:
        super().__init__()
        if num_channels < 4 or num_channels % 2:
            raise ValueError(f"positional embedding needs an even width >= 4, got {num_channels}")
        self.num_channels = num_channels
        self.max_positions = max_positions

    def forward(self, c_noise: Tensor) -> Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=c_noise.device) / (half - 1)
        freqs = (1 / self.max_positions) ** freqs  # [n/2]
        dtype = c_noise.dtype if c_noise.dtype.is_floating_point else torch.float32
        x = torch.outer(c_noise.to(dtype), freqs.to(dtype))  # [B, n/2]
        return torch.cat([x.cos(), x.sin()], dim=1)  # [B, n]


class AugmentEmbedding(nn.Module):
    """``emb + W labels`` (EDM's ``map_augment``, bias-free): the augmentation labels ``[B, augment_dim]`` of a
    training batch added to an embedding ``[B, width]``; ``labels=None`` (sampling) adds nothing."""

    def __init__(self, augment_dim: int, width: int) -> None:
        super().__init__()
        if augment_dim < 0:
            raise ValueError(f"augment_dim must be >= 0, got {augment_dim}")
        self.map = nn.Linear(augment_dim, width, bias=False)

    def forward(self, emb: Tensor, labels: Tensor | None) -> Tensor:
        if labels is None:
            return emb
        if labels.shape != (emb.shape[0], self.map.in_features):
            raise ValueError(f"augment_labels must be [B, {self.map.in_features}], got {list(labels.shape)}")
        return emb + self.map(labels.to(emb.dtype))


class ConditionEmbedding(nn.Module):
    """``silu(MLP(pos(c_noise) + label(cond)))`` per sample (Karras et al. 2022, ``SongUNet``).

    The label table has ``num_classes + 1`` rows; row ``num_classes`` is the null label, used where
    ``cond`` is ``None`` or ``-1``. With ``augment_dim`` > 0 the augmentation labels are added to the noise
    embedding (``AugmentEmbedding``).
    """

    def __init__(self, net: str, noise_channels: int, emb_channels: int, num_classes: int,
                 augment_dim: int = 0) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.pos = PositionalEmbedding(noise_channels)
        self.label = nn.Embedding(num_classes + 1, noise_channels) if num_classes > 0 else None
        self.fc0 = nn.Linear(noise_channels, emb_channels)
        self.fc1 = nn.Linear(emb_channels, emb_channels)
        self.augment = AugmentEmbedding(augment_dim, noise_channels) if augment_dim else None

    def forward(self, c_noise: Tensor, cond: Tensor | None, augment_labels: Tensor | None = None) -> Tensor:
        emb = self.pos(c_noise).to(self.fc0.weight.dtype)  # [B, noise_channels]
        if self.augment is not None:
            emb = self.augment(emb, augment_labels)
        idx = label_indices(self.net, cond, self.num_classes, emb.shape[0], emb.device)
        if self.label is not None and idx is not None:
            emb = emb + self.label(idx)
        return F.silu(self.fc1(F.silu(self.fc0(emb))))  # [B, emb_channels]


# --------------------------------------------------------------------------- attention


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens ``[B, N, D]`` with ``F.scaled_dot_product_attention``
    (Vaswani et al. 2017); each sample attends only to its own tokens."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, heads, N, D/heads]
        a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, D/heads]
        return self.proj(a.transpose(1, 2).reshape(B, N, D))  # [B, N, D]


def trunc_normal_init_(module: nn.Module, std: float = 0.02) -> None:
    """Truncated-normal weights, zero biases for each Linear in ``module`` (Bao et al. 2023)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

