"""Guidance sweeps: a grid of (scale, variant, sampler, steps, interval) points, drawn with shared seeds,
measured, written row by row into a resumable results folder, plotted and logged to W&B.

Entry point ``python -m cguide.sweep`` (__main__.py); the work is in runner.run_sweep. Nothing is
imported here: cguide.config imports sweep.config for its schemas, and must not pull in the metric
suite, matplotlib and W&B with it."""
