"""Recipe for the benchmark and demo molecules in data/molecules/ (extended XYZ, Å).

Needs RDKit, which is NOT a dependency of so3krates: run it from a throwaway environment, e.g.

    python3 -m venv /tmp/rdkit-venv
    /tmp/rdkit-venv/bin/pip install rdkit numpy
    /tmp/rdkit-venv/bin/python data/molecules/make_molecules.py

What it makes (every file's comment line records name, formula, SMILES and the method):

* ethanol.xyz        C2H6O,       9 atoms   SMILES CCO
* ac_ala3_nhme.xyz   C12H22N4O4, 42 atoms   capped tri-L-alanine Ac-Ala-Ala-Ala-NHMe
* dha.xyz            C22H32O2,   56 atoms   docosahexaenoic acid (all-cis 4,7,10,13,16,19)
* assembly_150.xyz   150 atoms: 3 Ac-Ala3-NHMe + 8 water, a compact cluster
* assembly_370.xyz   372 atoms: 6 Ac-Ala3-NHMe + 40 water, compact, about liquid density

Single molecules: RDKit ETKDGv3 embedding of several conformers (fixed random seed), each
optimised with MMFF94 to convergence, the lowest MMFF energy kept.

Assemblies: rigid molecules (each copy a different low-energy MMFF conformer) are inserted at
random orientations into a large sphere, then compacted by a greedy rigid-body Monte Carlo:
random small translations and rotations of one molecule at a time, each pulled towards the
centre, accepted when they reduce the sum of squared atom distances from the centre and create
no clash. Two atoms of different molecules clash when they are closer than
max(2.0 Å, 0.85 x the sum of their Bondi van der Waals radii) (H...H 2.04 Å, O...H 2.31 Å,
C...C 2.89 Å). The cluster as a whole is NOT force-field optimised (MMFF would pull hydrogen
bonds below 2 Å); it is a realistic-density benchmark input, not an equilibrium structure.

The script checks every file after writing it: it reads back, no two atoms are closer than
0.7 Å, every hydrogen has exactly one partner within 1.2 Å at a normal X-H bond length, and the
intermolecular minimum distance of the assemblies is at least 2.0 Å.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rdkit
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolDescriptors

HERE = Path(__file__).resolve().parent
SEED = 20240601

# L-alanines (the brief's SMILES, with the natural stereochemistry written out)
AC_ALA3_NHME = "CC(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)NC"
DHA = r"CC/C=C\C/C=C\C/C=C\C/C=C\C/C=C\C/C=C\CCC(=O)O"
WATER = "O"

BONDI_RADII = {"H": 1.20, "C": 1.70, "N": 1.55, "O": 1.52}
CLASH_SCALE = 0.85
MIN_INTERMOLECULAR = 2.0  # Å
XH_BOND_RANGE = {"C": (1.06, 1.12), "N": (0.98, 1.04), "O": (0.94, 1.00)}  # Å


# --- single molecules -------------------------------------------------------------------------


def conformers(smiles: str, count: int, seed: int) -> list[tuple[float, list[str], np.ndarray]]:
    """(MMFF energy in kcal/mol, symbols, positions) of MMFF-optimised ETKDG conformers, lowest first."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=count, params=params))
    if not ids:
        raise RuntimeError(f"ETKDG failed to embed {smiles}")
    results = AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=20000)
    symbols = [atom.GetSymbol() for atom in mol.GetAtoms()]
    out = []
    for conf_id, (not_converged, energy) in zip(ids, results):
        if not_converged:
            continue
        positions = np.array(mol.GetConformer(conf_id).GetPositions())
        out.append((float(energy), symbols, positions))
    if not out:
        raise RuntimeError(f"MMFF did not converge for any conformer of {smiles}")
    out.sort(key=lambda item: item[0])
    _check_stereo(mol, smiles)
    return out


def _check_stereo(mol, smiles: str) -> None:
    """The embedded conformers keep the stereochemistry the SMILES asks for."""
    reference = Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
    for conf in mol.GetConformers():
        copy = Chem.Mol(mol, confId=conf.GetId())
        copy.RemoveAllConformers()
        copy.AddConformer(Chem.Conformer(conf), assignId=True)
        Chem.AssignStereochemistryFrom3D(copy)
        if Chem.MolToSmiles(Chem.RemoveHs(copy)) != reference:
            raise RuntimeError(f"a conformer of {smiles} lost its stereochemistry")


def formula(symbols) -> str:
    """Hill formula: C, H, then the rest alphabetically."""
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    order = [e for e in ("C", "H") if e in counts] + sorted(e for e in counts if e not in ("C", "H"))
    return "".join(f"{e}{counts[e] if counts[e] > 1 else ''}" for e in order)


# --- assemblies -------------------------------------------------------------------------------


def random_rotation(rng: np.random.Generator, angle_scale: float | None = None) -> np.ndarray:
    """A uniformly random rotation matrix, or a small random one (angle ~ N(0, angle_scale))."""
    if angle_scale is None:
        q = rng.normal(size=4)
    else:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        half = 0.5 * rng.normal() * angle_scale
        q = np.concatenate([[math.cos(half)], math.sin(half) * axis])
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


class Packer:
    """Rigid molecules in a cluster, with a clash test against all other molecules."""

    def __init__(self, molecules: list[tuple[list[str], np.ndarray]], rng: np.random.Generator):
        self.rng = rng
        self.symbols = [s for symbols, _ in molecules for s in symbols]
        self.radii = np.array([BONDI_RADII[s] for s in self.symbols])
        self.owner = np.concatenate([np.full(len(symbols), k) for k, (symbols, _) in enumerate(molecules)])
        self.slices = []
        start = 0
        for symbols, _ in molecules:
            self.slices.append(slice(start, start + len(symbols)))
            start += len(symbols)
        # body-frame coordinates about each molecule's centroid
        self.body = [positions - positions.mean(axis=0) for _, positions in molecules]
        self.rotations = [np.eye(3) for _ in molecules]
        self.centres = [np.zeros(3) for _ in molecules]
        self.positions = np.full((start, 3), np.inf)  # not yet placed: infinitely far away

    def placed(self, k: int, rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
        return self.body[k] @ rotation.T + centre

    def clashes(self, k: int, candidate: np.ndarray) -> bool:
        others = self.owner != k
        d2 = np.sum((candidate[:, None, :] - self.positions[None, others, :]) ** 2, axis=-1)
        limit = np.maximum(MIN_INTERMOLECULAR, CLASH_SCALE * (self.radii[self.slices[k], None] + self.radii[None, others]))
        return bool(np.any(d2 < limit**2))

    def set(self, k: int, rotation: np.ndarray, centre: np.ndarray) -> None:
        self.rotations[k], self.centres[k] = rotation, centre
        self.positions[self.slices[k]] = self.placed(k, rotation, centre)

    def insert_all(self, radius: float) -> None:
        for k in range(len(self.body)):
            for _ in range(100000):
                centre = self.rng.uniform(-radius, radius, size=3)
                if np.linalg.norm(centre) > radius:
                    continue
                rotation = random_rotation(self.rng)
                candidate = self.placed(k, rotation, centre)
                if not self.clashes(k, candidate):
                    self.set(k, rotation, centre)
                    break
            else:
                raise RuntimeError("could not insert a molecule; enlarge the starting sphere")

    def compact(self, sweeps: int, step: float = 0.6, angle: float = 0.25, pull: float = 0.15) -> int:
        """Greedy rigid-body Monte Carlo towards the centre; returns the number of accepted moves."""
        accepted = 0
        for sweep in range(sweeps):
            scale = 1.0 - 0.8 * sweep / sweeps  # smaller moves as the cluster tightens
            centroid = self.positions.mean(axis=0)
            for k in self.rng.permutation(len(self.body)):
                old = self.positions[self.slices[k]]
                old_cost = np.sum((old - centroid) ** 2)
                toward = centroid - self.centres[k]
                centre = self.centres[k] + pull * scale * toward * self.rng.uniform() + self.rng.normal(
                    scale=step * scale, size=3
                )
                rotation = random_rotation(self.rng, angle * scale) @ self.rotations[k]
                candidate = self.placed(k, rotation, centre)
                if np.sum((candidate - centroid) ** 2) < old_cost and not self.clashes(k, candidate):
                    self.set(k, rotation, centre)
                    accepted += 1
        return accepted

    def min_intermolecular_distance(self) -> float:
        d = np.linalg.norm(self.positions[:, None] - self.positions[None, :], axis=-1)
        d[self.owner[:, None] == self.owner[None, :]] = np.inf
        return float(d.min())


def assembly(parts: list[tuple[str, int]], pool: dict[str, list], seed: int, sweeps: int) -> tuple[list[str], np.ndarray, Packer]:
    """Pack ``count`` copies of each named molecule into a compact cluster."""
    rng = np.random.default_rng(seed)
    molecules = []
    for name, count in parts:
        confs = pool[name]
        for copy in range(count):
            _, symbols, positions = confs[copy % len(confs)]
            molecules.append((symbols, positions))
    packer = Packer(molecules, rng)
    total = sum(len(s) for s, _ in molecules)
    packer.insert_all(radius=3.0 * (total / 0.1 * 3 / (4 * math.pi)) ** (1 / 3))
    packer.compact(sweeps)
    positions = packer.positions - packer.positions.mean(axis=0)
    return packer.symbols, positions, packer


def central_density(positions: np.ndarray, radius: float) -> float:
    """Atoms per Å^3 in a sphere about the centroid (liquid water: 0.100)."""
    r = np.linalg.norm(positions - positions.mean(axis=0), axis=1)
    return float(np.sum(r < radius) / (4 / 3 * math.pi * radius**3))


# --- output and checks ------------------------------------------------------------------------


def write_xyz(path: Path, symbols, positions, info: dict) -> None:
    def quote(value) -> str:
        if isinstance(value, float):
            return repr(value)
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    comment = " ".join(["Properties=species:S:1:pos:R:3"] + [f"{k}={quote(v)}" for k, v in info.items()] + ['pbc="F F F"'])
    lines = [str(len(symbols)), comment]
    lines += [f"{s:<2} {x:15.8f} {y:15.8f} {z:15.8f}" for s, (x, y, z) in zip(symbols, positions)]
    path.write_text("\n".join(lines) + "\n")


def check(path: Path, expected_atoms: int, info: dict) -> None:
    from ase.io import read

    atoms = read(path)
    assert len(atoms) == expected_atoms, (path, len(atoms))
    for key, value in info.items():
        read_back = atoms.info.get(key)
        same = np.isclose(read_back, value) if isinstance(value, float) else read_back == value
        assert same, (path, key, read_back, value)
    positions, symbols = atoms.get_positions(), atoms.get_chemical_symbols()
    d = np.linalg.norm(positions[:, None] - positions[None, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() > 0.7, (path, d.min())
    for i, s in enumerate(symbols):
        if s != "H":
            continue
        partners = np.flatnonzero(d[i] < 1.2)
        assert len(partners) == 1, (path, i, partners)
        j = partners[0]
        low, high = XH_BOND_RANGE[symbols[j]]
        assert low <= d[i, j] <= high, (path, i, symbols[j], d[i, j])


def main() -> None:
    method = f"RDKit {rdkit.__version__} ETKDGv3 (randomSeed={SEED}) + MMFF94 optimisation, lowest-energy of {{n}} conformers"
    specs = [
        ("ethanol", "CCO", 10, 9),
        ("ac_ala3_nhme", AC_ALA3_NHME, 30, 42),
        ("dha", DHA, 30, 56),
    ]
    pool = {}
    descriptions = {
        "ethanol": "ethanol",
        "ac_ala3_nhme": "capped tri-L-alanine Ac-Ala-Ala-Ala-NHMe",
        "dha": "docosahexaenoic acid (all-cis-4,7,10,13,16,19-docosahexaenoic acid)",
    }
    for name, smiles, count, expected in specs:
        confs = conformers(smiles, count, SEED)
        pool[name] = confs
        energy, symbols, positions = confs[0]
        positions = positions - positions.mean(axis=0)
        info = {
            "name": name,
            "description": descriptions[name],
            "formula": formula(symbols),
            "smiles": smiles,
            "method": method.format(n=count),
            "mmff94_energy_kcal_per_mol": round(energy, 4),
            "length_unit": "Angstrom",
        }
        path = HERE / f"{name}.xyz"
        write_xyz(path, symbols, positions, info)
        check(path, expected, info)
        print(f"{path.name}: {len(symbols)} atoms {info['formula']}, MMFF94 {energy:.2f} kcal/mol")
    pool["water"] = conformers(WATER, 1, SEED)

    assemblies = [
        ("assembly_150", [("ac_ala3_nhme", 3), ("water", 8)], 150, 400),
        ("assembly_370", [("ac_ala3_nhme", 6), ("water", 40)], 372, 600),
    ]
    for index, (name, parts, expected, sweeps) in enumerate(assemblies):
        seed = SEED + 1 + index
        symbols, positions, packer = assembly(parts, pool, seed, sweeps)
        min_inter = packer.min_intermolecular_distance()
        assert min_inter >= MIN_INTERMOLECULAR, (name, min_inter)
        radius_of_gyration = float(np.sqrt(np.mean(np.sum(positions**2, axis=1))))
        density = central_density(positions, 0.6 * radius_of_gyration)
        content = " + ".join(f"{count} {'Ac-Ala3-NHMe' if part == 'ac_ala3_nhme' else part}" for part, count in parts)
        info = {
            "name": name,
            "description": f"compact cluster of {content}",
            "formula": formula(symbols),
            "method": (
                f"rigid copies of RDKit {rdkit.__version__} ETKDGv3+MMFF94 conformers (the {parts[0][1]} "
                "lowest-MMFF-energy peptide conformers, one water), rigid-body greedy Monte Carlo "
                f"packing (seed={seed}, {sweeps} sweeps), intermolecular distances >= "
                f"max({MIN_INTERMOLECULAR} A, {CLASH_SCALE} x sum of Bondi vdW radii); cluster not optimised; "
                "see make_molecules.py"
            ),
            "min_intermolecular_distance": round(min_inter, 3),
            "radius_of_gyration": round(radius_of_gyration, 3),
            "length_unit": "Angstrom",
        }
        path = HERE / f"{name}.xyz"
        write_xyz(path, symbols, positions, info)
        check(path, expected, info)
        print(
            f"{path.name}: {len(symbols)} atoms {info['formula']}, min intermolecular {min_inter:.2f} Å, "
            f"Rg {radius_of_gyration:.2f} Å, central density {density:.3f} atoms/Å^3 (liquid water 0.100)"
        )


if __name__ == "__main__":
    main()
