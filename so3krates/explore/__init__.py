"""Exploring the potential-energy surface: relaxation, minima hopping, the minima store, the PES graph.

* :mod:`~so3krates.explore.relax`: FIRE, jitted and batched (``relax``, ``irelax``);
* :mod:`~so3krates.explore.hopping`: minima-hopping walkers and quenching of MD frames;
* :mod:`~so3krates.explore.store`: the SQLite minima store with duplicate detection;
* :mod:`~so3krates.explore.campaign`: many walkers on threads or Dask into one store (``Exploration``);
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

__all__ = [
    "Excursion", "ExcursionTask", "Exploration", "ExplorationConfig", "Progress", "read_hops", "run_excursion",
    "HopResult", "HoppingConfig", "MatchTolerances", "MinimaHoppingWalker", "MinimaStore", "Minimum", "RelaxConfig",
    "RelaxResult", "RelaxStep", "Transition", "aligned_rmsd", "build_graph", "disconnectivity_plot", "export",
    "graph_from_store", "irelax", "load_json", "minimax_path", "quench_frames", "refine_barrier", "relax",
]
