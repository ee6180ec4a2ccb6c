"""Local relaxation of one structure, as a generator (the dashboard's Relax button, notebooks).

``irelax(atoms, model)`` runs ASE's FIRE on the project's calculator (float64 by default) and
yields a :class:`RelaxStep` every ``every`` steps and at the end, so a caller can show progress
and stop whenever it likes. The last step says whether max |F| reached ``fmax``; a relaxation
that did not converge within ``max_steps`` says so rather than pretending.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import ase
import numpy as np
from ase.optimize import FIRE
from jaxtyping import Float

from so3krates.calculator import SO3kratesCalculator


@dataclasses.dataclass(frozen=True)
class RelaxStep:
    step: int
    positions: Float[np.ndarray, "n 3"]  # Å
    energy: float  # eV
    max_force: float  # eV/Å, the largest per-atom |F|
    converged: bool
    done: bool  # the last step of this relaxation (converged or out of steps)


def irelax(atoms: ase.Atoms, model, *, fmax: float = 0.05, max_steps: int = 500, every: int = 5,
           dtype: str = "float64", maxstep: float = 0.1) -> Iterator[RelaxStep]:
    """Relax a copy of ``atoms`` with ``model`` (a Potential) until max |F| < ``fmax`` eV/Å."""
    if not fmax > 0 or max_steps < 1 or every < 1:
        raise ValueError(f"need fmax > 0, max_steps >= 1 and every >= 1; got {fmax}, {max_steps}, {every}")
    work = atoms.copy()
    work.calc = SO3kratesCalculator(model, dtype=dtype)
    optimizer = FIRE(work, maxstep=maxstep, logfile=None)

    def report(step: int, done: bool) -> RelaxStep:
        forces = work.get_forces()
        largest = float(np.sqrt((forces**2).sum(axis=1).max()))
        return RelaxStep(step, work.get_positions(), float(work.get_potential_energy()), largest,
                         largest < fmax, done or largest < fmax)

    step = 0
    for step, _ in enumerate(optimizer.irun(fmax=fmax, steps=max_steps)):
        if step % every == 0:
            current = report(step, False)
            if current.done:
                yield current
                return
            yield current
    yield report(step, True)
