"""Recipe for the built-in molecules that run with SO3LR (extended XYZ, Å; see README.md here).

Two stages, because RDKit is NOT a dependency of so3krates:

    python3 -m venv /tmp/rdkit && /tmp/rdkit/bin/pip install rdkit numpy
    /tmp/rdkit/bin/python data/molecules/make_so3lr_molecules.py embed /tmp/embedded
    .venv/bin/python data/molecules/make_so3lr_molecules.py finish /tmp/embedded SO3LR_GIT_DIR

``embed`` (RDKit): ETKDGv3 conformers of aspirin, caffeine and alanine dipeptide, MMFF94-optimised,
the lowest MMFF energy kept (``make_molecules.conformers``, same seed).

``finish`` (so3krates): each embedded molecule relaxed with SO3LR in float64 (neutral, ASE's BFGS
until max |F| < 0.005 eV/Å); and three structures taken unchanged from the SO3LR repository
(MIT licence, read with ``git show`` at the commit given, 5ec39b9 for the shipped files):

* ``ala15_helix.xyz``   examples/data/ala15_folded.xyz: a folded (helical) Ac-(Ala)15-NHMe, 162 atoms
* ``at_base_pair.xyz``  tests/test_data/atat.xyz holds two stacked Watson-Crick A·T pairs (bases
  capped with H at the sugar position); its first 30 atoms are one pair (adenine, thymine)
* ``water_box.xyz``     tests/test_data/water_64.xyz: 64 waters in a periodic 12.4 Å cube,
  equilibrated with SO3LR (``equilibrate_water``): that file is a snapshot of a hot run (its
  momenta are at ~1000 K), and MD started from its positions heated to ~570 K within 20 fs. It
  is relaxed (FIRE to max |F| < 0.05 eV/Å), then run for 2 ps of Langevin at 300 K (float32,
  1 fs, friction 0.01/fs, seed 0); the last frame, wrapped into the cell, is kept (no momenta).
  ``.venv/bin/python data/molecules/make_so3lr_molecules.py water SO3LR_GIT_DIR`` redoes only it.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SMILES = {  # name: (description, SMILES)
    "aspirin": ("aspirin (acetylsalicylic acid)", "CC(=O)Oc1ccccc1C(=O)O"),
    "caffeine": ("caffeine", "Cn1cnc2c1c(=O)n(C)c(=O)n2C"),
    "alanine_dipeptide": ("alanine dipeptide, Ac-L-Ala-NHMe", "CC(=O)N[C@@H](C)C(=O)NC"),
}
FROM_SO3LR = {  # name: (description, path in the SO3LR repository, atoms kept: (start, stop) or None)
    "ala15_helix": ("folded Ala15 helix, Ac-(Ala)15-NHMe", "examples/data/ala15_folded.xyz", None),
    "at_base_pair": ("adenine-thymine Watson-Crick base pair", "tests/test_data/atat.xyz", (0, 30)),
    "water_box": ("64 water molecules in a periodic 12.4 Å box", "tests/test_data/water_64.xyz", None),
}
FMAX = 0.005  # eV/Å


def embed(out: Path) -> None:
    sys.path.insert(0, str(HERE))
    import rdkit
    from make_molecules import SEED, conformers

    out.mkdir(parents=True, exist_ok=True)
    for name, (description, smiles) in SMILES.items():
        energy, symbols, positions = conformers(smiles, 10, SEED)[0]
        lines = [str(len(symbols)), f"RDKit {rdkit.__version__} ETKDGv3 (randomSeed={SEED}) + MMFF94, lowest of 10; "
                 f"MMFF94 {energy:.4f} kcal/mol"]
        lines += [f"{s} {x:.8f} {y:.8f} {z:.8f}" for s, (x, y, z) in zip(symbols, positions)]
        (out / f"{name}.xyz").write_text("\n".join(lines) + "\n")
        print(f"{name}: {len(symbols)} atoms, MMFF94 {energy:.2f} kcal/mol")


def finish(embedded: Path, so3lr_git: Path) -> None:
    import ase
    import ase.io
    from ase.calculators.calculator import Calculator, all_changes
    from ase.optimize import BFGS

    import so3krates

    so3krates.configure()
    so3lr = so3krates.load_model(HERE.parents[0] / "models" / "so3lr")

    class SO3LRFloat64(Calculator):
        """Energy and forces from Potential.calculate in float64 (neutral), for ASE's optimiser."""

        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            result = so3lr.calculate(self.atoms, dtype="float64", total_charge=0.0)
            self.results = {"energy": result["energy"], "forces": np.asarray(result["forces"])}

    for name, (description, smiles) in SMILES.items():
        source = embedded / f"{name}.xyz"
        atoms = ase.io.read(source)
        atoms.calc = SO3LRFloat64()
        optimiser = BFGS(atoms, logfile=None)
        converged = optimiser.run(fmax=FMAX, steps=2000)
        energy = atoms.get_potential_energy()
        fmax = np.abs(atoms.get_forces()).max()
        if not converged:
            raise RuntimeError(f"{name}: SO3LR relaxation did not converge (max |F| {fmax:.4f} eV/Å)")
        embedding = source.read_text().splitlines()[1].strip()  # the comment line says how it was embedded
        method = (f"{embedding}; then relaxed with SO3LR (data/models/so3lr) in float64, "
                  f"ASE BFGS to max |F| < {FMAX} eV/Å ({optimiser.nsteps} steps)")
        write(name, ase.Atoms(atoms.numbers, atoms.positions), description, smiles=smiles, method=method,
              so3lr_energy_eV=round(float(energy), 6))
        print(f"{name}: {len(atoms)} atoms, SO3LR {energy:.4f} eV after {optimiser.nsteps} BFGS steps")

    commit = subprocess.run(["git", "-C", str(so3lr_git), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    for name, (description, path, keep) in FROM_SO3LR.items():
        text = subprocess.run(["git", "-C", str(so3lr_git), "show", f"HEAD:{path}"], capture_output=True, text=True,
                              check=True).stdout
        atoms = ase.io.read(io.StringIO(text), format="extxyz")
        kept = "all atoms" if keep is None else f"atoms {keep[0] + 1}-{keep[1]} of {len(atoms)}"
        atoms = atoms if keep is None else atoms[keep[0]:keep[1]]
        source = f"SO3LR repository (MIT licence) {path} at commit {commit}"
        if name == "water_box":
            box = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True)
            write(name, equilibrate_water(box, so3lr), description, source=source, method=WATER_METHOD)
        else:  # SO3LR's test files put molecules in a 999.9 Å periodic box: a free molecule here
            molecule = ase.Atoms(atoms.numbers, atoms.positions)
            molecule.positions -= molecule.positions.mean(axis=0)
            write(name, molecule, description, source=source, method=f"taken unchanged ({kept}), centred")
        print(f"{name}: {len(atoms)} atoms from {path}")


WATER_METHOD = ("positions and cell of that file, relaxed with SO3LR (FIRE, float64, max |F| < 0.05 eV/Å), "
                "then 2 ps of Langevin at 300 K with SO3LR (float32, 1 fs, friction 0.01/fs, seed 0); "
                "the last frame, wrapped into the cell")


def equilibrate_water(box, so3lr):
    """The water box relaxed and then thermalised at 300 K with SO3LR (see the module docstring)."""
    import ase

    from so3krates.explore.relax import RelaxConfig, relax
    from so3krates.md import MDConfig, Simulation

    relaxed = relax([box], so3lr, RelaxConfig(fmax=0.05, max_steps=3000, dtype="float64"))
    if not relaxed.all_converged:
        raise RuntimeError(f"water_box: relaxation did not converge (max |F| {relaxed.max_force[0]:.3f} eV/Å)")
    print(f"water_box: relaxed in {int(relaxed.steps[0])} steps, E {float(relaxed.energy[0]):.3f} eV")
    start = ase.Atoms(box.numbers, relaxed.positions[0][: len(box)], cell=box.cell, pbc=True)
    config = MDConfig(ensemble="langevin", temperature=300.0, timestep=1.0, friction=0.01, chunk_steps=500,
                      record_every=100, dtype="float32", seed=0)
    result = Simulation(start, so3lr, config).run(2000)
    if result.blowup is not None:
        raise RuntimeError(f"water_box: equilibration stopped: {result.blowup}")
    print(f"water_box: 2 ps at 300 K, mean T over the last ps {np.mean(result.temperature[result.time_fs > 1000]):.0f} K")
    final = ase.Atoms(box.numbers, result.positions[-1], cell=box.cell, pbc=True)
    final.wrap()
    return final


def water(so3lr_git: Path) -> None:
    """Redo only the water box (the other molecules unchanged)."""
    import ase
    import ase.io

    import so3krates

    so3krates.configure()
    so3lr = so3krates.load_model(HERE.parents[0] / "models" / "so3lr")
    commit = subprocess.run(["git", "-C", str(so3lr_git), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    description, path, _ = FROM_SO3LR["water_box"]
    text = subprocess.run(["git", "-C", str(so3lr_git), "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout
    atoms = ase.io.read(io.StringIO(text), format="extxyz")
    box = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True)
    write("water_box", equilibrate_water(box, so3lr), description,
          source=f"SO3LR repository (MIT licence) {path} at commit {commit}", method=WATER_METHOD)


def write(name: str, atoms, description: str, **info) -> None:
    import ase.io

    atoms.info = {"name": name, "description": description, "formula": atoms.get_chemical_formula(), **info,
                  "length_unit": "Angstrom"}
    path = HERE / f"{name}.xyz"
    ase.io.write(path, atoms, format="extxyz")
    back = ase.io.read(path)
    assert len(back) == len(atoms) and np.allclose(back.positions, atoms.positions, atol=1e-6), path


if __name__ == "__main__":
    stage, *arguments = sys.argv[1:]
    if stage == "embed":
        embed(Path(arguments[0]))
    elif stage == "finish":
        finish(Path(arguments[0]), Path(arguments[1]))
    elif stage == "water":
        water(Path(arguments[0]))
    else:
        raise SystemExit(__doc__)
