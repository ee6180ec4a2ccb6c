"""Exploring the potential-energy surface: relaxation, minima hopping, the minima store, the PES graph.

* :mod:`~so3krates.explore.relax`: FIRE and L-BFGS, jitted and batched (``relax``, ``irelax``);
* :mod:`~so3krates.explore.hopping`: minima-hopping walkers and quenching of MD frames;
* :mod:`~so3krates.explore.store`: the SQLite minima store with duplicate detection;
* :mod:`~so3krates.explore.campaign`: many walkers on threads or Dask into one store (``Exploration``);
* :mod:`~so3krates.explore.validate`: minima checked against GFN2-xTB (``validate_minima``);
* :mod:`~so3krates.explore.graph`: the PES connectivity graph (networkx), minimax paths,
  disconnectivity plots, NEB refinement of barriers, GraphML/JSON export.
"""

from so3krates.explore.campaign import Exploration, ExplorationConfig, Progress, read_hops
from so3krates.explore.graph import (
    build_graph, disconnectivity_plot, export, graph_from_store, load_json, minimax_path, refine_barrier,
)
from so3krates.explore.hopping import (
    Excursion, ExcursionTask, HoppingConfig, HopResult, MinimaHoppingWalker, quench_frames, run_excursion,
)
from so3krates.explore.relax import RelaxConfig, RelaxResult, RelaxStep, irelax, relax
from so3krates.explore.store import MatchTolerances, MinimaStore, Minimum, Transition, aligned_rmsd
from so3krates.explore.validate import ValidationConfig, ValidationReport, validate_minima

__all__ = [
    "ValidationConfig", "ValidationReport", "validate_minima",
    "Excursion", "ExcursionTask", "Exploration", "ExplorationConfig", "Progress", "read_hops", "run_excursion",
    "HopResult", "HoppingConfig", "MatchTolerances", "MinimaHoppingWalker", "MinimaStore", "Minimum", "RelaxConfig",
    "RelaxResult", "RelaxStep", "Transition", "aligned_rmsd", "build_graph", "disconnectivity_plot", "export",
    "graph_from_store", "irelax", "load_json", "minimax_path", "quench_frames", "refine_barrier", "relax",
]
