"""The diffusion core: schedules, update rules, the sequential and Picard samplers, warm start, dispatch.

Imports torch and numpy only, and nothing else of parapolicy (tests/test_layout.py): every sampler is
a free function over a `Denoiser` callable, so this package runs wherever torch runs.

    options.py      option names (torch-free; config.py re-exports them)
    rules/          one module per update rule (torch-free at import), the registry
    step_table.py   StepTable / StepRows: per-step coefficients by step position
    schedules.py    training schedule, inference timesteps, make_step_table
    step.py         the one reverse step (x̂₀, then the rule's update), add_noise
    sequential.py   sample_sequential, draw_noise, SampleResult
    inpaint.py      known rows imposed inside the shared step (delay-aware stitching)
    picard.py       sample_picard (ParaDiGMS sliding-window Picard iteration)
    rollout.py      the Picard refill's x̂₀-held roll-out, in closed form
    coarse.py       the Parareal update's linear coarse model (the denoiser's x̂₀ Jacobian)
    parareal.py     the Parareal update's carry along a window, per coarse model
    warm_start.py   shifted previous sample / common random numbers for the next chunk
    dispatch.py     run_sampler: sequential or Picard, by the settings' is_parallel
    denoiser.py     the Denoiser protocol
"""
