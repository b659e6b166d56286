"""DDPM++-style U-Net (Song et al. 2021; Karras et al. 2022, ``networks.SongUNet``), simplified.

Residual blocks with GroupNorm, SiLU, 3x3 convs and an adaptive scale/shift from the noise (+class)
embedding (Dhariwal & Nichol 2021), self-attention at chosen resolutions, strided-conv downsampling,
nearest+conv upsampling, concatenated skips, and a zero-initialised output conv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    ConditionEmbedding,
    SelfAttention,
    centred_padding,
    check_dropout,
    check_int_fields,
    check_net_inputs,
    check_positive,
    crop_centred,
    group_norm,
    pad_centred,
    scale_init_,
    to_int_tuple,
)

__all__ = ["UNet", "UNetConfig"]

_SKIP_SCALE = math.sqrt(0.5)  # Karras et al. 2022, SongUNet ``skip_scale``
_INIT_ZERO = 1e-5  # Karras et al. 2022, SongUNet ``init_zero``: residual branches start near zero


@dataclass(frozen=True)
class UNetConfig:
    """U-Net hyper-parameters.

    The defaults keep a batch-128 training step at 1x8x8 under 0.1 s on 2 CPU cores; EDM's CIFAR-10
    DDPM++ uses ``model_channels=128, channel_mult=(2, 2, 2), num_blocks=4, dropout=0.13``.
    ``attn_resolutions`` above ``side`` (the image's, below) are ignored, so the default ``(16,)`` also builds
    at 8x8 (without attention). A side that the levels do not halve exactly (13x13 with 3 levels) is
    zero-padded, centred, to the next multiple of ``2**(levels-1)`` and the output cropped back (``pad``).
    ``dropout > 0`` draws from torch's global RNG in training mode.
    """

    img_resolution: int
    in_channels: int
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    num_classes: int = 0
    augment_dim: int = 0

    def __post_init__(self) -> None:
        for name in ("channel_mult", "attn_resolutions"):  # JSON gives lists
            object.__setattr__(self, name, to_int_tuple("unet", name, getattr(self, name)))
        check_int_fields("unet", self, ("img_resolution", "in_channels", "model_channels",
                                        "num_blocks", "num_classes", "augment_dim"))
        check_positive("unet", img_resolution=self.img_resolution, in_channels=self.in_channels,
                       model_channels=self.model_channels, num_blocks=self.num_blocks)
        if not self.channel_mult or min(self.channel_mult) <= 0:
            raise ValueError(f"unet: channel_mult must be non-empty, all > 0: {self.channel_mult}")
        if self.num_classes < 0:
            raise ValueError(f"unet: num_classes must be >= 0, got {self.num_classes}")
        check_dropout("unet", self.dropout)
        res = self.resolutions
        bad = [r for r in self.attn_resolutions if r <= self.side and r not in res]
        if bad:
            raise ValueError(f"unet: attn_resolutions {bad} are not among the U-Net's resolutions "
                             f"{self.resolutions}")

    @property
    def side(self) -> int:
        """The side the levels run on: the image's, zero-padded (``pad``) to a multiple of ``2**(levels-1)``
        where it is not one (13x13 with 3 levels: 16), so that each strided conv halves it exactly."""
        return self.img_resolution + sum(self.pad)

    @property
    def pad(self) -> tuple[int, int]:
        """Zero rows (and columns) before and after the image that make its side ``side``, centred."""
        return centred_padding(self.img_resolution, 2 ** (len(self.channel_mult) - 1))

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map side length at each level, e.g. ``(32, 16, 8)``."""
        return tuple(self.side >> level for level in range(len(self.channel_mult)))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, adaptive scale/shift from the embedding, SiLU-dropout-conv, 1x1 skip
    when the width changes, optional self-attention (Karras et al. 2022, ``UNetBlock``)."""

    def __init__(
        self, cin: int, cout: int, emb_channels: int, dropout: float, attention: bool
    ) -> None:
        super().__init__()
        self.norm0 = group_norm(cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * cout)
        self.norm1 = group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = scale_init_(nn.Conv2d(cout, cout, 3, padding=1), _INIT_ZERO)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.attn_norm = group_norm(cout) if attention else None
        self.attn = SelfAttention(cout, num_heads=1) if attention else None
        if self.attn is not None:
            scale_init_(self.attn.proj, _INIT_ZERO)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))  # [B, cout, H, W]
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)  # 2 x [B, cout, 1, 1]
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        x = (h + (x if self.skip is None else self.skip(x))) * _SKIP_SCALE
        if self.attn is not None and self.attn_norm is not None:
            B, C, H, W = x.shape
            tokens = self.attn_norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
            a = self.attn(tokens).transpose(1, 2).reshape(B, C, H, W)
            x = (x + a) * _SKIP_SCALE
        return x


def upsample2x(x: Tensor) -> Tensor:
    """Nearest-neighbour x2 upsampling. CUDA's backward of ``F.interpolate`` uses atomic adds, so under
    ``torch.use_deterministic_algorithms`` (``TrainConfig.deterministic``) a broadcast copy with a plain-sum
    backward is used there instead; the forward is identical. Elsewhere ``F.interpolate``, which keeps CPU
    results bit-identical with earlier runs (the two backward sums round differently, ~1e-7)."""
    if x.is_cuda and torch.are_deterministic_algorithms_enabled():
        B, C, H, W = x.shape
        return x[:, :, :, None, :, None].expand(B, C, H, 2, W, 2).reshape(B, C, 2 * H, 2 * W)
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class UNet(nn.Module):
    """``F(x_in [B, C, R, R], c_noise [B], cond [B] | None) -> [B, C, R, R]`` (DDPM++)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        mc, self.emb_channels = cfg.model_channels, 4 * cfg.model_channels
        noise_ch = 2 * ((max(mc, 4) + 1) // 2)  # positional embedding width: even, >= 4
        self.embed = ConditionEmbedding("unet", noise_ch, self.emb_channels, cfg.num_classes, cfg.augment_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)
        self.down, self.enc = nn.ModuleList(), nn.ModuleList()
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        skips = self._build_encoder()
        low, cur = cfg.resolutions[-1], skips[-1]
        self.mid = nn.ModuleList([self._block(cur, cur, low), self._block(cur, cur, low, False)])
        cur = self._build_decoder(skips)
        self.norm_out = group_norm(cur)
        self.conv_out = scale_init_(nn.Conv2d(cur, cfg.in_channels, 3, padding=1), 0.0)

    def _block(self, cin: int, cout: int, res: int, attention: bool = True) -> ResBlock:
        cfg = self.config
        attention = attention and res in cfg.attn_resolutions
        return ResBlock(cin, cout, self.emb_channels, cfg.dropout, attention)

    def _build_encoder(self) -> list[int]:
        """Levels of ``num_blocks`` blocks, a strided conv before all but the first; skip widths."""
        cfg, cur = self.config, self.config.model_channels
        skips = [cur]
        for level, (mult, res) in enumerate(zip(cfg.channel_mult, cfg.resolutions, strict=True)):
            if level > 0:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
            blocks = nn.ModuleList()
            for _ in range(cfg.num_blocks):
                blocks.append(self._block(cur, cfg.model_channels * mult, res))
                cur = cfg.model_channels * mult
                skips.append(cur)
            self.enc.append(blocks)
        return skips

    def _build_decoder(self, skips: list[int]) -> int:
        """Levels of ``num_blocks + 1`` blocks on ``concat(x, skip)``, nearest+conv upsampling
        after all but the last; returns the output width."""
        cfg, cur = self.config, skips[-1]
        for level in reversed(range(len(cfg.channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_blocks + 1):
                cout = cfg.model_channels * cfg.channel_mult[level]
                blocks.append(self._block(cur + skips.pop(), cout, cfg.resolutions[level]))
                cur = cout
            self.dec.append(blocks)
            if level > 0:
                self.up.append(nn.Conv2d(cur, cur, 3, padding=1))
        return cur

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        cfg = self.config
        check_net_inputs("unet", x_in, c_noise, cfg.in_channels, cfg.img_resolution)
        emb = self.embed(c_noise, cond, augment_labels)  # [B, 4 * model_channels]
        # zero padding where the levels do not halve the image exactly
        x = self.conv_in(pad_centred(x_in, cfg.pad))  # [B, model_channels, S, S], S = cfg.side
        skips = [x]
        for level, blocks in enumerate(self.enc):
            if level > 0:
                x = self.down[level - 1](x)  # [B, C, R / 2**level, R / 2**level]
                skips.append(x)
            for blk in blocks:
                x = blk(x, emb)
                skips.append(x)
        for blk in self.mid:
            x = blk(x, emb)
        for level, blocks in enumerate(self.dec):
            for blk in blocks:
                x = blk(torch.cat([x, skips.pop()], dim=1), emb)
            if level < len(self.up):
                x = self.up[level](upsample2x(x))
        x = self.conv_out(F.silu(self.norm_out(x)))  # [B, C, S, S]
        return crop_centred(x, cfg.pad, cfg.img_resolution)  # [B, C, R, R]
