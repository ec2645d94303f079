"""How the denoiser runs: device layouts (threads, processes), CUDA graphs, timing, the auto window."""
