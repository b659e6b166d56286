"""The text-to-image pipeline (reprodiff.adapters.text2image): a tiny random Stable-Diffusion-shaped pipeline built
and saved locally (UNet2DConditionModel, CLIP text encoder + tokenizer, AutoencoderKL) in our terms, its guided
denoiser, and same seed => same images."""

from __future__ import annotations

import pytest
import torch

from tiny_diffusers import PROMPTS, need, save_sd_pipeline

need("diffusers")
need("transformers")

from reprodiff import sampling  # noqa: E402
from reprodiff.adapters.text2image import TextToImage  # noqa: E402


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> TextToImage:
    return TextToImage(save_sd_pipeline(tmp_path_factory.mktemp("sd") / "a", seed=0))


def test_components_in_our_terms(pipe) -> None:
    emb = pipe.embed(list(PROMPTS))
    assert emb.shape == (2, 12, 16) and not torch.equal(emb[0], emb[1])
    assert torch.equal(pipe.null, pipe.embed([""])[0])
    assert pipe.latent_shape(8) == (4, 4, 4)
    with pytest.raises(ValueError, match="multiple of the VAE's factor 2"):
        pipe.latent_shape(7)
    assert 0 < pipe.unet.sigma_min < 0.1 and 10 < pipe.unet.sigma_max < 20  # SD's scaled_linear range


def test_guidance_scale_one_is_the_conditional_denoiser(pipe) -> None:
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64) * 5
    sigma = torch.tensor([5.0, 1.3, 0.2], dtype=torch.float64)
    cond = pipe.embed(["a red cat"]).expand(3, -1, -1)
    torch.testing.assert_close(pipe.denoiser(1.0)(x, sigma, cond), pipe.unet(x, sigma, cond), rtol=0, atol=0)
    uncond, c = pipe.unet(x, sigma, pipe.null.expand(3, -1, -1)), pipe.unet(x, sigma, cond)
    guided = pipe.denoiser(3.0)(x, sigma, cond)  # one batch of 6 rows vs two of 3: BLAS rounding only
    torch.testing.assert_close(guided, uncond + 3.0 * (c - uncond), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(c, uncond)  # the prompt matters


def test_same_seed_same_images_and_decode_scaling(pipe) -> None:
    kw = {"seed": 5, "count": 3, "sampler": "dpm++2m", "steps": 4, "guidance": 4.0, "resolution": 8}
    z1, x1 = pipe.generate("a red cat", **kw)
    z2, x2 = pipe.generate("a red cat", **kw)
    assert torch.equal(z1, z2) and torch.equal(x1, x2) and x1.shape == (3, 3, 8, 8)
    z4, x4 = pipe.generate("a red cat", **(kw | {"count": 2}))  # fewer samples: the same first ones, bit for bit
    assert torch.equal(z4, z1[:2]) and torch.equal(x4, x1[:2])
    assert float(x1.min()) >= -1 and float(x1.max()) <= 1
    _, x3 = pipe.generate("a red cat", **(kw | {"seed": 6}))
    assert not torch.equal(x1, x3)
    with torch.no_grad():  # decode divides by the VAE's scaling factor
        ref = pipe.vae.decode(z1[:1] / 0.18215).sample.clamp(-1, 1)
    torch.testing.assert_close(pipe.decode(z1[:1]), ref)
    # the latent starts from sampling.noise(seed, i) at the clamped grid's first sigma
    sigmas = sampling.make_sigmas(pipe.denoiser(4.0), 4)
    assert float(sigmas[0]) == pytest.approx(pipe.unet.sigma_max)
