"""U-ViT (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models").

Patches, the noise token and (optionally) a class token form one sequence; ``depth // 2`` pre-norm
transformer in-blocks, one mid-block and ``depth // 2`` out-blocks, with long skips from in-block
``i`` to out-block ``depth // 2 - 1 - i`` (Bao et al. 2023, Fig. 1), then LayerNorm, a linear map
to patch pixels, unpatchify and a 3x3 conv.

Two initialisations differ from Bao et al.'s code, measured on 8x8 digits (``benchmarks/run.py nets``, loss
per sigma bucket) where the net learned several times more slowly than a U-Net of half its speed:
- ``final_init = "identity"``: the 3x3 conv starts as the identity (``nn.init.dirac_``), not at zero. At
  zero it gates every gradient behind ten scalars (the conv at ``C = 1``), so the body learns only as fast
  as that conv's weights grow; this alone cut the mid-sigma loss at 200 steps from 0.80 to 0.64.
  ``"zero"`` keeps the earlier behaviour (EDM's zero output layer); the output still starts small,
  because ``decoder_pred`` keeps Bao et al.'s std-0.02 weights.
- ``pos_embed_std = 1.0``: the learned position embedding starts at the scale of the patch tokens
  (unit-amplitude, as Vaswani et al. 2017's sinusoids), not at std 0.02 (Bao et al.), where the tokens
  barely know their position and the net must first grow it to output a per-pixel mean.

``time_cond`` sets how the noise level reaches the blocks. ``"token"`` (the default): only as the time token in
the sequence (Bao et al. 2023, Sec. 3.1, who chose it over adaptive layer norm on CIFAR-10). ``"adaln"``: the
time token, and in every block a shift and scale of both pre-norms and a gain on both residual branches, learned
from the noise embedding (adaLN, Peebles & Xie 2023, Sec. 3.2; :class:`Modulation`: zero weights, biases that
make every scale and gain 1, built after every other weight, so the net starts as the token net of the same
seed). The small studies' U-ViT uses it: with the time token alone a block's gain cannot follow sigma, yet
memorizing asks for it -- the preconditioned target at low noise is ``-(x - y) / sigma``, the input's offset from
the training image magnified by ``1 / sigma`` -- and on RGB images that net stayed close to the identity at low
noise for thousands of steps. Measured (the default study's U-ViT alone at its smallest N, GL of 256 Heun samples
at the study's per-N threshold): 8x8 RGB photo crops (``tests/other_data.py``), N = 4, GL 0.84 / 0.60 / 0.45
after 800 / 1,600 / 3,200 steps with the token alone, 0.39 / 0.25 / 0.16 with adaLN; 16x16 thumbnails of two
photos, N = 8, GL 1.00 after 6,400 steps, 0.11 after 3,200; on the digits, N = 4, the level-0 fit ratio after 800
steps 0.031 against 0.016. A training step of the study's U-ViT (batch 24, 8x8, one thread) costs ~12% more.

``patch_size = "auto"`` (the studies' U-ViT) picks the divisor of the image size whose token grid is nearest 4x4
(16 tokens; the smaller patch on a tie) among the patches a token can hold (``p * p * C <= embed_dim``): 2 on 8x8
digits, 3 on 12x12, 7 on 28x28, 4 on 16x16 RGB, 4 (64 tokens) on 32x32 RGB, where patch 8 (192 values into 96
channels) left the net unable to fit 8 images in 4,800 steps (every sample novel). So the net's
sequence length, cost per step and steps to memorize stay those measured on the digits for a dataset of
another image size: on 12x12 letters (``tests/other_data.py``, 8 training images, 1,200 steps), patch 2
(36 tokens) took 95 s and left 17% of samples novel, patch 3 (16 tokens) 47 s and 8% (``benchmarks/run.py
anydata``). Bao et al. choose the patch per resolution too (U-ViT-S/2 at 32x32, /4 at 64x64). Where the
divisor's grid nearest 16 tokens is more than a factor 4 off -- a prime side: 13x13 would take patch 1 and 169
tokens, ~10x the time per step; 7x7 grey patch 7 and one token -- ``"auto"`` picks a patch that does not
divide the image (13x13: 4, 7x7: 2) and the net zero-pads its input, centred, to a multiple of it and crops its
output back (``pad``; any ``patch_size`` up to the image's side may be given so).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    AugmentEmbedding,
    PositionalEmbedding,
    SelfAttention,
    centred_padding,
    check_int_fields,
    check_net_inputs,
    check_positive,
    crop_centred,
    label_indices,
    pad_centred,
    scale_init_,
    trunc_normal_init_,
)

__all__ = ["AUTO_TOKENS", "FINAL_INITS", "TIME_CONDS", "UViT", "UViTConfig", "auto_patch_size"]

FINAL_INITS = ("identity", "zero")  # how the final 3x3 conv starts (module docstring)
TIME_CONDS = ("token", "adaln")  # how the noise level enters the blocks (module docstring)
AUTO_TOKENS = 16  # patch_size = "auto": the token grid nearest 4 x 4 (module docstring)


def auto_patch_size(img_resolution: int, in_channels: int = 1, embed_dim: int | None = None) -> int:
    """The divisor ``p`` of ``img_resolution`` with ``(img_resolution / p)^2`` tokens nearest ``AUTO_TOKENS``
    (the smaller ``p`` on a tie), among those whose patch fits a token (``p^2 * in_channels <= embed_dim``); where
    even that grid is more than a factor 4 off (a prime side: 13x13 would be 169 tokens, 7x7 grey 1), the patch
    with the image zero-padded to a multiple of it (``UViTConfig.pad``): nearest grid, then least padding."""
    fits = [p for p in range(1, img_resolution + 1)
            if embed_dim is None or p == 1 or p * p * in_channels <= embed_dim]

    def key(p: int) -> tuple[int, int, int]:
        side = -(-img_resolution // p)
        return abs(side * side - AUTO_TOKENS), side * p - img_resolution, p

    exact = min((p for p in fits if img_resolution % p == 0), key=key)
    if AUTO_TOKENS // 4 <= (img_resolution // exact) ** 2 <= AUTO_TOKENS * 4:
        return exact
    return min(fits, key=key)


@dataclass(frozen=True)
class UViTConfig:
    """U-ViT hyper-parameters.

    The defaults keep a batch-128 training step at 1x8x8 under 0.1 s on 2 CPU cores; U-ViT-S/2 for
    CIFAR-10 uses ``embed_dim=512, depth=12, num_heads=8`` (Bao et al. 2023). ``pos_embed_std`` and
    ``final_init`` are the two initialisations of the module docstring (Bao et al.'s: 0.02, and a random
    final conv; reprodiff before: 0.02 and ``"zero"``).
    """

    img_resolution: int
    in_channels: int
    patch_size: int | str = 2
    embed_dim: int = 64
    depth: int = 6
    num_heads: int = 2
    mlp_ratio: float = 4.0
    num_classes: int = 0
    augment_dim: int = 0
    pos_embed_std: float = 1.0
    final_init: str = "identity"
    time_cond: str = "token"

    def __post_init__(self) -> None:
        if self.patch_size == "auto":  # resolved once, here: the net, its checkpoint and its reload agree
            if not isinstance(self.img_resolution, int) or isinstance(self.img_resolution, bool) \
                    or self.img_resolution < 1:
                raise ValueError(f"uvit: img_resolution must be a positive integer, got {self.img_resolution!r}")
            object.__setattr__(self, "patch_size", auto_patch_size(self.img_resolution, self.in_channels,
                                                                   self.embed_dim))
        elif isinstance(self.patch_size, str):
            raise ValueError(f"uvit: patch_size must be a positive integer or \"auto\", got {self.patch_size!r}")
        check_int_fields("uvit", self, ("img_resolution", "in_channels", "patch_size", "embed_dim",
                                        "depth", "num_heads", "num_classes", "augment_dim"))
        check_positive("uvit", img_resolution=self.img_resolution, in_channels=self.in_channels,
                       patch_size=self.patch_size, embed_dim=self.embed_dim, depth=self.depth,
                       num_heads=self.num_heads, mlp_ratio=self.mlp_ratio)
        if self.num_classes < 0:
            raise ValueError(f"uvit: num_classes must be >= 0, got {self.num_classes}")
        check_positive("uvit", pos_embed_std=self.pos_embed_std)
        if self.final_init not in FINAL_INITS:
            raise ValueError(f"uvit: final_init must be one of {', '.join(FINAL_INITS)}, got {self.final_init!r}")
        if self.time_cond not in TIME_CONDS:
            raise ValueError(f"uvit: time_cond must be one of {', '.join(TIME_CONDS)}, got {self.time_cond!r}")
        if self.patch > self.img_resolution:
            raise ValueError(f"uvit: patch_size={self.patch_size} is larger than the image "
                             f"(img_resolution={self.img_resolution}); use at most {self.img_resolution}")
        if self.depth % 2:
            raise ValueError(f"uvit: depth must be even (depth/2 in-blocks, a mid-block, depth/2 "
                             f"out-blocks), got {self.depth}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"uvit: embed_dim={self.embed_dim} is not divisible by "
                             f"num_heads={self.num_heads}")
        if self.embed_dim < 4 or self.embed_dim % 2:
            raise ValueError(f"uvit: embed_dim must be even and >= 4 (it carries the sinusoidal time token), "
                             f"got {self.embed_dim}")

    @property
    def patch(self) -> int:
        """``patch_size`` as a number (``"auto"`` is resolved when the config is made)."""
        assert isinstance(self.patch_size, int)
        return self.patch_size

    @property
    def grid(self) -> int:
        """Patches per side: the image, zero-padded to a multiple of the patch where it is not one (``pad``)."""
        return (self.img_resolution + sum(self.pad)) // self.patch

    @property
    def pad(self) -> tuple[int, int]:
        """Zero rows (and columns) before and after the image that make its side ``grid * patch``, centred."""
        return centred_padding(self.img_resolution, self.patch)

    @property
    def num_patches(self) -> int:
        return self.grid**2


class Block(nn.Module):
    """Pre-norm transformer block; with ``skip``, first ``Linear(concat(x, skip))``.

    Bao et al. 2023, Fig. 1 (long skip branch) and Sec. 3.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, skip: bool) -> None:
        super().__init__()
        hidden = max(1, round(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, skip: Tensor | None = None, mod: tuple[Tensor, ...] | None = None) -> Tensor:
        """``mod``: adaLN's (shift, scale, gain) for the attention and the MLP branch, each ``[B, 1, D]``
        (:class:`Modulation`; scale and gain multiply); None: unmodulated."""
        if self.skip_linear is not None and skip is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # [B, N, D]
        if mod is None:
            x = x + self.attn(self.norm1(x))
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))  # [B, N, D]
        s1, c1, g1, s2, c2, g2 = mod
        x = torch.addcmul(x, g1, self.attn(torch.addcmul(s1, self.norm1(x), c1)))
        return torch.addcmul(x, g2, self.fc2(F.gelu(self.fc1(torch.addcmul(s2, self.norm2(x), c2)))))  # [B, N, D]


class Modulation(nn.Module):
    """adaLN (Peebles & Xie 2023, DiT, Sec. 3.2): per-channel maps ``[B, 1, D]`` of the noise embedding ``e [B, D]``
    -- for each of ``blocks`` blocks the shift, scale and gain of its two branches, then the shift and scale of the
    last norm -- from one linear layer (one matrix product per step for all of them). Its weights start at zero and
    its biases at the identity (scales and gains 1, shifts 0): the net starts as the unmodulated one."""

    def __init__(self, dim: int, blocks: int) -> None:
        super().__init__()
        self.dim = dim
        self.linear = scale_init_(nn.Linear(dim, (6 * blocks + 2) * dim), 0.0)
        with torch.no_grad():
            branches = self.linear.bias[: 6 * blocks * dim].view(2 * blocks, 3, dim)  # (shift, scale, gain) each
            branches[:, 1:] = 1.0
            self.linear.bias.view(-1, dim)[-1] = 1.0  # the last norm: shift 0, scale 1

    def forward(self, e: Tensor) -> tuple[Tensor, ...]:
        return self.linear(e)[:, None].split(self.dim, dim=-1)  # (6 * blocks + 2) x [B, 1, D]


class UViT(nn.Module):
    """``F(x_in [B, C, R, R], c_noise [B], cond [B] | None) -> [B, C, R, R]`` (Bao et al. 2023)."""

    def __init__(self, config: UViTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        D, p, C = cfg.embed_dim, cfg.patch, cfg.in_channels
        self.patch_embed = nn.Conv2d(C, D, kernel_size=p, stride=p)
        # The time token is the raw sinusoidal embedding (U-ViT's default, mlp_time_embed=False): behind
        # a std-0.02 MLP it starts near zero and the net learns the noise level far more slowly.
        self.time_pos = PositionalEmbedding(D)
        self.label_emb = nn.Embedding(cfg.num_classes + 1, D) if cfg.num_classes > 0 else None
        self.extras = 1 + (cfg.num_classes > 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + cfg.num_patches, D))
        half, heads, ratio = cfg.depth // 2, cfg.num_heads, cfg.mlp_ratio
        self.in_blocks = nn.ModuleList(Block(D, heads, ratio, False) for _ in range(half))
        self.mid_block = Block(D, heads, ratio, False)
        self.out_blocks = nn.ModuleList(Block(D, heads, ratio, True) for _ in range(half))
        self.norm = nn.LayerNorm(D)
        self.decoder_pred = nn.Linear(D, p * p * C)
        self.final_layer = nn.Conv2d(C, C, 3, padding=1)
        std = cfg.pos_embed_std
        nn.init.trunc_normal_(self.pos_embed, std=std, a=-2 * std, b=2 * std)
        trunc_normal_init_(self)
        if cfg.final_init == "identity":
            nn.init.dirac_(self.final_layer.weight)
            nn.init.zeros_(self.final_layer.bias)
        else:
            scale_init_(self.final_layer, 0.0)
        self.augment = AugmentEmbedding(cfg.augment_dim, D) if cfg.augment_dim else None  # last: other inits unchanged
        self.modulation: Modulation | None = None
        self.time_mlp: nn.Module | None = None
        if cfg.time_cond == "adaln":  # after every other init: the token net's weights, then these
            self.modulation = Modulation(D, len(self.in_blocks) + 1 + len(self.out_blocks))
            self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU())  # PyTorch's default init

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        cfg = self.config
        check_net_inputs("uvit", x_in, c_noise, cfg.in_channels, cfg.img_resolution)
        B, p, C = x_in.shape[0], cfg.patch, cfg.in_channels
        n = cfg.grid  # patches per side, with zero padding where the patch does not divide the image
        x = self.patch_embed(pad_centred(x_in, cfg.pad)).flatten(2).transpose(1, 2)  # [B, L, D]
        t = self.time_pos(c_noise).to(x.dtype)  # [B, D]
        if self.augment is not None:
            t = self.augment(t, augment_labels)
        tokens = [t[:, None], x]  # time token first (Bao et al. 2023, Sec. 3)
        idx = label_indices("uvit", cond, cfg.num_classes, B, x.device)
        if self.label_emb is not None and idx is not None:
            tokens.insert(1, self.label_emb(idx)[:, None])
        x = torch.cat(tokens, dim=1) + self.pos_embed  # [B, extras + L, D]
        blocks = len(self.in_blocks) + 1 + len(self.out_blocks)
        mods: list[tuple[Tensor, ...] | None] = [None] * (blocks + 1)
        if self.modulation is not None and self.time_mlp is not None:
            m = self.modulation(self.time_mlp(t))
            mods = [m[6 * i : 6 * i + 6] for i in range(blocks)] + [m[-2:]]  # per block, then the last norm
        skips: list[Tensor] = []
        for i, blk in enumerate(self.in_blocks):
            x = blk(x, mod=mods[i])
            skips.append(x)
        x = self.mid_block(x, mod=mods[len(self.in_blocks)])
        for i, blk in enumerate(self.out_blocks, start=len(self.in_blocks) + 1):
            x = blk(x, skips.pop(), mod=mods[i])
        x = self.norm(x)
        if (last := mods[-1]) is not None:
            x = torch.addcmul(last[0], x, last[1])
        x = self.decoder_pred(x)[:, self.extras:]  # [B, L, p * p * C]
        x = x.reshape(B, n, n, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, n * p, n * p)
        x = self.final_layer(x)  # [B, C, n * p, n * p]
        return crop_centred(x, cfg.pad, cfg.img_resolution)  # [B, C, R, R]
