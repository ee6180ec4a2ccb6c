"""The minima store: every minimum found, how often and by whom, and the transitions between them.

An SQLite file (the standard library's ``sqlite3``; geometries as float64 bytes, never pickles)
with one row per distinct minimum (energy in eV, positions in Å, visit count, first finder and
time), a visit count per finder, and one row per unordered pair of minima the explorer passed
between (crossings, and the lowest over crossings of the highest energy seen on the way: an
upper bound of the barrier).

Same minimum or not
    A new structure is compared only with the stored minima whose energy lies within
    ``energy_window`` of its own (an SQL range query on an indexed column), then by the
    best-aligned RMSD (:func:`aligned_rmsd`) over translation, rotation (Kabsch), inversion where
    allowed, and permutations of chemically equivalent atoms (:func:`equivalent_atom_classes`).
    It joins the closest candidate with RMSD <= ``rmsd``, or becomes a new minimum. The RMSD
    search is a heuristic, but every value it returns is the RMSD of an actual superposition, an
    upper bound of the true best one: a miss can only split one minimum into two rows, never
    merge two different minima.

Concurrent writers, interrupted runs
    Every :meth:`MinimaStore.add` and :meth:`MinimaStore.add_transition` is one ``BEGIN
    IMMEDIATE`` transaction (search and insert under one write lock, so two processes finding the
    same new minimum at once cannot both insert it), on a connection opened for that call only
    (sqlite3 connections must not cross threads or a fork). The file is in WAL mode (readers
    never block the writer) with a 30 s busy timeout, so several processes or threads may write
    at once. A committed call survives a crash of the writer; an optional ``key`` (a token unique
    to one observation, e.g. ``"walker3/hop17"``) makes a call idempotent, so an interrupted
    exploration that replays its last steps with the same keys neither loses nor double counts
    a visit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
import warnings
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment

from so3krates.analysis import kabsch
from so3krates.data.bonds import bond_graph

__all__ = ["MatchTolerances", "Minimum", "Transition", "MinimaStore", "equivalent_atom_classes", "aligned_rmsd"]

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000
# Align -> reassign rounds per start; the assignment is usually stable after two or three.
_MAX_ASSIGNMENT_ROUNDS = 10


@dataclasses.dataclass(frozen=True)
class MatchTolerances:
    """When two relaxed structures count as the same minimum.

    energy_window: eV. Only stored minima with |E - E_new| <= energy_window are compared. It is a
        prefilter, not the criterion: wide enough for the scatter of one minimum relaxed from
        different starts (a structure relaxed to max |F| = 0.05 eV/Å lies ~F^2/2k = 1e-4 eV
        above its minimum along a 10 eV/Å^2 mode; float32 models add ~1e-4 eV of noise),
        narrow enough that only a few candidates reach the RMSD comparison. Too narrow splits
        one minimum into several rows.
    rmsd: Å, after the best alignment. Relaxation scatter along stiff modes is ~0.01 Å; turning
        one hydroxyl H by 120° moves it 1.6 Å, an RMSD of 1.6/sqrt(N) (0.5 Å for ethanol, 0.2 Å
        for 56 atoms), so 0.1 Å separates rotamers up to ~250 atoms. Lower it for larger
        molecules (the RMSD dilutes a local change over all atoms); raise it for floppy
        molecules relaxed loosely, whose soft modes scatter more.
    allow_inversion: also try the mirror image (x -> -x, with every rotation: all improper
        rotations). True merges enantiomeric minima (e.g. gauche+ and gauche- ethanol), which
        have equal energies on any achiral potential; False keeps them apart.
    permute_equivalent: also try permutations within classes of topologically equivalent atoms
        (methyl hydrogens and similar), so a methyl rotated by 120° is the same minimum.
    """

    energy_window: float = 0.02
    rmsd: float = 0.1
    allow_inversion: bool = True
    permute_equivalent: bool = True

    def __post_init__(self):
        for name in ("energy_window", "rmsd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"MatchTolerances.{name} must be a positive finite number, got {value!r}")
        for name in ("allow_inversion", "permute_equivalent"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MatchTolerances.{name} must be True or False, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: an array field has no truth value
class Minimum:
    """A stored minimum: energy (eV), positions (n, 3) Å, visits, first finder, first time (unix s)."""

    id: int
    energy: float
    positions: Float[np.ndarray, "n 3"]
    count: int
    found_by: str
    first_found: float


@dataclasses.dataclass(frozen=True)
class Transition:
    """Minima ``first < second`` passed between ``count`` times; ``barrier`` (eV) is an upper bound."""

    first: int
    second: int
    count: int
    barrier: float


def equivalent_atom_classes(numbers: Sequence[int], positions: Float[np.ndarray, "n 3"],
                            bonds: Sequence[Collection[int]] | None = None) -> Int[np.ndarray, " n"]:
    """Class labels (n,): atoms with equal labels are topologically equivalent in the bond graph.

    Colour refinement (1-D Weisfeiler-Lehman): start from the element, then repeatedly recolour
    each atom by its colour and the sorted colours of its neighbours, until the number of colours
    stops growing. ``bonds`` is the graph as neighbour sets (``bond_graph``'s form); None builds
    it from ``positions`` with covalent radii. Labels are canonical (ranks of the refined
    colours), so a renumbering of the atoms permutes the labels with them. Refinement can leave
    two inequivalent atoms in one class (it cannot tell some regular graphs apart); that only
    lets :func:`aligned_rmsd` try more permutations, each still judged by its RMSD.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    graph = bond_graph(numbers, positions) if bonds is None else [set(neighbours) for neighbours in bonds]
    if len(graph) != len(numbers):
        raise ValueError(f"bonds has {len(graph)} atoms but numbers has {len(numbers)}")
    colours = np.unique(numbers, return_inverse=True)[1]
    while True:
        signatures = [(int(colours[i]), tuple(sorted(int(colours[j]) for j in graph[i]))) for i in range(len(graph))]
        ranks = {signature: rank for rank, signature in enumerate(sorted(set(signatures)))}
        refined = np.array([ranks[signature] for signature in signatures], dtype=np.int64)
        if len(ranks) == len(np.unique(colours)):
            return refined
        colours = refined


def _principal_frame(centred: np.ndarray) -> np.ndarray:
    """Eigenvectors (columns) of the gyration tensor, largest first."""
    return np.linalg.eigh(centred.T @ centred)[1][:, ::-1]


def _starting_rotations(x: np.ndarray, y: np.ndarray, groups: list[np.ndarray]) -> list[np.ndarray]:
    """First alignments of x (centred) onto y (centred) that do not trust the atom labels blindly."""
    rotations = [kabsch(x, y)[0]]  # the identity assignment
    # Class centroids do not move under any permutation within a class: a label-free alignment
    # whenever they span 3-D (ethanol, most molecules); degenerate for symmetric tops.
    x_centroids = np.array([x[g].mean(axis=0) for g in groups])
    y_centroids = np.array([y[g].mean(axis=0) for g in groups])
    weights = np.array([len(g) for g in groups], dtype=np.float64)
    rotations.append(kabsch(x_centroids, y_centroids, weights)[0])
    # Principal axes, each up to sign (four proper rotations): label-free, and the only start
    # that copes with a molecule whose classes all sit at one centre (benzene).
    frame_x, frame_y = _principal_frame(x), _principal_frame(y)
    for signs in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        diagonal = np.array([signs[0], signs[1], signs[0] * signs[1]], dtype=np.float64)
        rotation = frame_y @ np.diag(diagonal) @ frame_x.T
        rotations.append(rotation * np.sign(np.linalg.det(rotation)))
    return rotations


def aligned_rmsd(positions: Float[np.ndarray, "n 3"], reference: Float[np.ndarray, "n 3"],
                 classes: Int[np.ndarray, " n"] | None = None, allow_inversion: bool = True) -> float:
    """The RMSD (Å) of ``positions`` onto ``reference`` after the best superposition found.

    Minimised over translation and proper rotation (Kabsch), over inversion x -> -x if
    ``allow_inversion``, and over the assignment of atoms within each class of ``classes``
    (equal labels may be permuted; None permutes nothing). Method, a heuristic: from each of
    several first rotations (Kabsch with the given labels, Kabsch of the class centroids, the
    four sign choices of the principal axes), alternate (a) the optimal assignment within each
    class for the current rotation (Hungarian algorithm on squared distances) and (b) the
    optimal rotation for that assignment (Kabsch), until the assignment repeats. Each step
    lowers the RMSD, so each start ends in a local optimum; the smallest is returned. It can
    miss the global optimum (a too-high value), never undercut it.
    """
    x0, y = np.asarray(positions, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if x0.ndim != 2 or x0.shape[1] != 3 or x0.shape != y.shape:
        raise ValueError(f"positions {x0.shape} and reference {y.shape} must both be the same (n, 3)")
    if not (np.all(np.isfinite(x0)) and np.all(np.isfinite(y))):
        raise ValueError("positions and reference must be finite")
    n = len(y)
    labels = np.arange(n) if classes is None else np.asarray(classes)
    if labels.shape != (n,):
        raise ValueError(f"classes must have shape ({n},), got {labels.shape}")
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    permutable = [g for g in groups if len(g) > 1]
    y = y - y.mean(axis=0)
    best = np.inf
    for sign in (1.0, -1.0) if allow_inversion else (1.0,):
        x = sign * (x0 - x0.mean(axis=0))
        for rotation in _starting_rotations(x, y, groups):
            order, seen = np.arange(n), set()  # reference atom i is matched with x[order[i]]
            for _ in range(_MAX_ASSIGNMENT_ROUNDS):
                rotated = x @ rotation.T
                for g in permutable:
                    cost = np.sum((y[g][:, None] - rotated[g][None]) ** 2, axis=-1)
                    rows, cols = linear_sum_assignment(cost)
                    order[g[rows]] = g[cols]
                if order.tobytes() in seen:
                    break
                seen.add(order.tobytes())
                rotation, translation = kabsch(x[order], y)
                deviation = x[order] @ rotation.T + translation - y
                best = min(best, float(np.sqrt(np.mean(np.sum(deviation ** 2, axis=1)))))
                if not permutable:
                    break
    return best


_SCHEMA = """
CREATE TABLE IF NOT EXISTS metadata (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS minima (
    id INTEGER PRIMARY KEY AUTOINCREMENT, energy REAL NOT NULL, positions BLOB NOT NULL,
    count INTEGER NOT NULL, found_by TEXT NOT NULL, first_found REAL NOT NULL);
CREATE INDEX IF NOT EXISTS minima_by_energy ON minima (energy);
CREATE TABLE IF NOT EXISTS finders (
    minimum INTEGER NOT NULL REFERENCES minima (id), found_by TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (minimum, found_by));
CREATE TABLE IF NOT EXISTS minimum_keys (key TEXT PRIMARY KEY, minimum INTEGER NOT NULL REFERENCES minima (id));
CREATE TABLE IF NOT EXISTS transitions (
    first INTEGER NOT NULL REFERENCES minima (id), second INTEGER NOT NULL REFERENCES minima (id),
    count INTEGER NOT NULL, barrier REAL NOT NULL, PRIMARY KEY (first, second), CHECK (first < second));
CREATE TABLE IF NOT EXISTS transition_keys (key TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS created_by_key (key TEXT PRIMARY KEY, minimum INTEGER NOT NULL REFERENCES minima (id));
"""


def _use_wal(connection: sqlite3.Connection) -> None:
    """Write-ahead logging (persistent: set once on the file). Switching to it takes an exclusive
    lock for which SQLite may not wait (another process opening the new file at the same moment
    gets "database is locked" at once), so retry until the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class MinimaStore:
    """Distinct minima of one molecule (fixed atoms and order) in an SQLite file; see the module docstring.

    ``tolerances`` None uses the file's own (those it was created with; the defaults for a new
    file); tolerances that differ from the file's are used, with a warning. ``bonds`` fixes the
    bond graph for the equivalence classes (neighbour sets); None takes each added structure's
    own, from covalent radii.
    """

    def __init__(self, path: str | Path, numbers: Sequence[int], tolerances: MatchTolerances | None = None,
                 bonds: Sequence[Collection[int]] | None = None):
        self.path = Path(path)
        self.numbers = np.array(numbers, dtype=np.int64)
        if self.numbers.ndim != 1 or len(self.numbers) == 0 or np.any(self.numbers < 1) or np.any(self.numbers > 118):
            raise ValueError(f"numbers must be a non-empty list of atomic numbers 1..118, got {numbers!r}")
        self._bonds = None if bonds is None else [set(neighbours) for neighbours in bonds]
        if self._bonds is not None and len(self._bonds) != len(self.numbers):
            raise ValueError(f"bonds has {len(self._bonds)} atoms but numbers has {len(self.numbers)}")
        with self._connection() as connection:
            _use_wal(connection)
            with self._transaction(connection):
                tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if tables and "metadata" not in tables:
                    raise ValueError(f"{self.path} is an SQLite file but not a minima store (tables {sorted(tables)})")
                for statement in _SCHEMA.split(";"):  # not executescript: it would commit the transaction
                    connection.execute(statement)
                stored = dict(connection.execute("SELECT name, value FROM metadata").fetchall())
                if not stored:
                    tolerances = tolerances or MatchTolerances()
                    connection.executemany("INSERT INTO metadata VALUES (?, ?)", [
                        ("schema_version", str(SCHEMA_VERSION)), ("numbers", json.dumps(self.numbers.tolist())),
                        ("tolerances", json.dumps(dataclasses.asdict(tolerances)))])
                    stored_tolerances = tolerances
                else:
                    if stored.get("schema_version") != str(SCHEMA_VERSION):
                        raise ValueError(f"{self.path} has store schema {stored.get('schema_version')}, "
                                         f"this code reads {SCHEMA_VERSION}")
                    if json.loads(stored["numbers"]) != self.numbers.tolist():
                        raise ValueError(f"{self.path} holds minima of atomic numbers {json.loads(stored['numbers'])}, "
                                         f"not {self.numbers.tolist()}")
                    stored_tolerances = MatchTolerances(**json.loads(stored["tolerances"]))
        if tolerances is not None and tolerances != stored_tolerances:
            warnings.warn(f"{self.path} was built with {stored_tolerances}; matching now with {tolerances}",
                          stacklevel=2)
        self.tolerances = tolerances or stored_tolerances

    @classmethod
    def open(cls, path: str | Path, tolerances: MatchTolerances | None = None,
             bonds: Sequence[Collection[int]] | None = None) -> MinimaStore:
        """An existing store, with the atomic numbers it records (a missing file is an error, never created)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no minima store there")
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)) as connection:
                row = connection.execute("SELECT value FROM metadata WHERE name = 'numbers'").fetchone()
        except sqlite3.DatabaseError as error:  # not SQLite, or SQLite without the store's tables
            raise ValueError(f"{path} is not a minima store: {error}") from error
        if row is None:
            raise ValueError(f"{path} is not a minima store: it records no atomic numbers")
        return cls(path, json.loads(row[0]), tolerances, bonds)

    # --- connections ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection for one call (autocommit: transactions are explicit), closed after it."""
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as error:
            raise ValueError(f"cannot open the minima store {self.path}: {error}") from error
        try:
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA foreign_keys=ON")
            yield connection
        except sqlite3.DatabaseError as error:
            if type(error) is not sqlite3.DatabaseError:
                raise  # e.g. "database is locked" past the busy timeout: not a damaged file
            # "file is not a database", "database disk image is malformed"
            raise ValueError(f"{self.path} is not a usable minima store: {error}") from error
        finally:
            connection.close()

    @contextlib.contextmanager
    def _transaction(self, connection: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE: take the write lock before reading, so a search and its insert are atomic."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    # --- writing --------------------------------------------------------------------------
    def _checked_positions(self, positions) -> np.ndarray:
        positions = np.array(positions, dtype=np.float64)
        if positions.shape != (len(self.numbers), 3):
            raise ValueError(f"positions must have shape ({len(self.numbers)}, 3), got {positions.shape}")
        if not np.all(np.isfinite(positions)):
            raise ValueError("positions must be finite")
        return positions

    def add(self, positions: Float[np.ndarray, "n 3"], energy: float, found_by: str, *,
            key: str | None = None) -> tuple[int, bool]:
        """Record one visit of a relaxed structure: ``(minimum id, whether it is a new minimum)``.

        A ``key`` already recorded changes nothing and returns what it returned the first time
        (a resumed walker replaying its last hop sees the same outcome).
        """
        positions = self._checked_positions(positions)
        energy = float(energy)
        if not np.isfinite(energy):
            raise ValueError(f"energy must be finite, got {energy}")
        _check_label(found_by, key)
        tolerances = self.tolerances
        classes = (equivalent_atom_classes(self.numbers, positions, self._bonds)  # outside the write lock
                   if tolerances.permute_equivalent else None)
        with self._connection() as connection, self._transaction(connection):
            if key is not None:
                seen = connection.execute("SELECT minimum FROM minimum_keys WHERE key = ?", (key,)).fetchone()
                if seen is not None:
                    created = connection.execute("SELECT 1 FROM created_by_key WHERE key = ?", (key,)).fetchone()
                    return int(seen[0]), created is not None
            candidates = connection.execute(
                "SELECT id, positions FROM minima WHERE energy BETWEEN ? AND ?",
                (energy - tolerances.energy_window, energy + tolerances.energy_window)).fetchall()
            best_id, best_rmsd = None, np.inf
            for minimum_id, blob in candidates:
                reference = np.frombuffer(blob, dtype=np.float64).reshape(-1, 3)
                value = aligned_rmsd(positions, reference, classes, tolerances.allow_inversion)
                if value <= tolerances.rmsd and value < best_rmsd:
                    best_id, best_rmsd = int(minimum_id), value
            is_new = best_id is None
            if is_new:
                best_id = connection.execute(
                    "INSERT INTO minima (energy, positions, count, found_by, first_found) VALUES (?, ?, 1, ?, ?)",
                    (energy, positions.tobytes(), found_by, time.time())).lastrowid
            else:
                connection.execute("UPDATE minima SET count = count + 1 WHERE id = ?", (best_id,))
            connection.execute("INSERT INTO finders VALUES (?, ?, 1) ON CONFLICT (minimum, found_by) "
                               "DO UPDATE SET count = count + 1", (best_id, found_by))
            if key is not None:
                connection.execute("INSERT INTO minimum_keys VALUES (?, ?)", (key, best_id))
                if is_new:
                    connection.execute("INSERT INTO created_by_key VALUES (?, ?)", (key, best_id))
            return best_id, is_new

    def add_transition(self, first_id: int, second_id: int, barrier: float, found_by: str, *,
                       key: str | None = None) -> bool:
        """Record one passage between two minima with the highest energy seen on the way (eV).

        Stored unordered; the barrier kept is the lowest observed. A passage from a minimum to
        itself, or a ``key`` already recorded, changes nothing. Returns whether it was recorded.
        """
        barrier = float(barrier)
        if not np.isfinite(barrier):
            raise ValueError(f"barrier must be finite, got {barrier}")
        _check_label(found_by, key)
        first, second = sorted((int(first_id), int(second_id)))
        with self._connection() as connection, self._transaction(connection):
            known = {row[0] for row in connection.execute("SELECT id FROM minima WHERE id IN (?, ?)", (first, second))}
            if known != {first, second}:
                raise KeyError(f"no minimum {sorted({first, second} - known)} in {self.path}")
            if first == second:
                return False
            if key is not None:
                if connection.execute("SELECT 1 FROM transition_keys WHERE key = ?", (key,)).fetchone():
                    return False
                connection.execute("INSERT INTO transition_keys VALUES (?)", (key,))
            connection.execute("INSERT INTO transitions VALUES (?, ?, 1, ?) ON CONFLICT (first, second) DO UPDATE "
                               "SET count = count + 1, barrier = min(barrier, excluded.barrier)",
                               (first, second, barrier))
            return True

    # --- reading --------------------------------------------------------------------------
    def _minima(self, where: str = "", parameters: tuple = ()) -> list[Minimum]:
        with self._connection() as connection:
            rows = connection.execute("SELECT id, energy, positions, count, found_by, first_found FROM minima "
                                      f"{where} ORDER BY energy, id", parameters).fetchall()
        result = []
        for minimum_id, energy, blob, count, found_by, first_found in rows:
            positions = np.frombuffer(blob, dtype=np.float64).reshape(-1, 3).copy()
            positions.flags.writeable = False
            result.append(Minimum(int(minimum_id), float(energy), positions, int(count), found_by, float(first_found)))
        return result

    def minima(self) -> list[Minimum]:
        """Every minimum, lowest energy first."""
        return self._minima()

    def get(self, minimum_id: int) -> Minimum:
        found = self._minima("WHERE id = ?", (int(minimum_id),))
        if not found:
            raise KeyError(f"no minimum {minimum_id} in {self.path}")
        return found[0]

    def finders(self, minimum_id: int) -> dict[str, int]:
        """Who found minimum ``minimum_id``, and how often each."""
        with self._connection() as connection:
            rows = connection.execute("SELECT found_by, count FROM finders WHERE minimum = ? ORDER BY found_by",
                                      (int(minimum_id),)).fetchall()
        return {found_by: int(count) for found_by, count in rows}

    def transitions(self) -> list[Transition]:
        with self._connection() as connection:
            rows = connection.execute("SELECT first, second, count, barrier FROM transitions "
                                      "ORDER BY first, second").fetchall()
        return [Transition(int(a), int(b), int(count), float(barrier)) for a, b, count, barrier in rows]

    def __len__(self) -> int:
        with self._connection() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM minima").fetchone()[0])

    def __repr__(self) -> str:
        return f"MinimaStore({str(self.path)!r}, {len(self.numbers)} atoms, {len(self)} minima)"


def _check_label(found_by: str, key: str | None) -> None:
    if not isinstance(found_by, str) or not found_by:
        raise ValueError(f"found_by must be a non-empty string, got {found_by!r}")
    if key is not None and (not isinstance(key, str) or not key):
        raise ValueError(f"key must be None or a non-empty string, got {key!r}")
