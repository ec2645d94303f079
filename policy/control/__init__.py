"""Closed-loop control: settings, the real-time controller, tasks, records, rollout entry points, plots."""
