"""Exploring the potential-energy surface: relaxation, the minima store, the PES graph."""

from so3krates.explore.relax import RelaxConfig, RelaxResult, RelaxStep, irelax, relax

__all__ = ["RelaxConfig", "RelaxResult", "RelaxStep", "irelax", "relax"]
