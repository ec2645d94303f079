"""The diffusion core: schedules, update rules, the sequential and Picard samplers, warm start, dispatch.

Imports torch and numpy only, and nothing else of parapolicy (tested): every sampler is a free
function over a `Denoiser` callable, so this package runs wherever torch runs.
"""
