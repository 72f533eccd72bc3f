"""Runnable demos: `maskops demo [basic|packnet|dgm]`."""
