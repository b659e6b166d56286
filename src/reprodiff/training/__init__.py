"""Training loops: diffusion models (``train.py``) and the GAN/VAE baselines (``baselines.py``)."""
