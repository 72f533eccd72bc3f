"""Benchmarks: the op sweep (`maskops bench`) and the deployment study (`maskops bench --model`).

Every figure is measured side by side in one process on the same inputs:
`naive` (weight * visible built each call, what peers do), `cached` (a
pre-masked dense copy per task: the speed ceiling at T times the memory),
`loop` (per-task naive calls for a batch that mixes tasks) and each maskops
backend through the public ops.
"""
