"""How the denoiser runs: device layouts (threads, processes), CPU and CUDA graphs, timing, auto window."""
