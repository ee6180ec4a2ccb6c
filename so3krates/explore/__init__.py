"""Exploring the potential-energy surface: relaxation (more arrives with minima hopping)."""

from so3krates.explore.relax import RelaxStep, irelax

__all__ = ["RelaxStep", "irelax"]
