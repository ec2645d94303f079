"""Closed-loop control, one job per module.

- `settings`: `ControlConfig` (mode, rate, budget, miss policy) and `LatencyModel`.
- `task`, `tasks/`: the `Task` protocol (what the controller needs of an environment) and its
  implementations (PushT-v0, gym-pusht).
- `controller`: runs a set of episodes; `planner`: plans and their latency; `timeline`: the ticks.
- `records`, `faults`, `episode`: typed records (plans, episode records, results), fault codes, the
  live state of an episode.
- `latency`: step/chunk logs and summaries; `evaluation`: the reference protocol's settings and
  metrics; `rollout`: the entry points; `run_support`: the rollout jobs' shared settings
  (`PolicyRunConfig`) and helpers; `plots`: figures.
"""
