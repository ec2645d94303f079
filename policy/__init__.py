"""The diffusion-policy library: networks, step math, samplers, ParaDDPM, datasets. Never imports Hydra."""
