"""One browser session's exploration: the minima-hopping campaign and MD quenching, off the UI thread.

The library's :class:`~so3krates.explore.campaign.Exploration` drives its walkers on its own
thread (threads or Dask); quenching MD frames runs on a worker thread here; a refresher thread
reads the minima store (SQLite) every half second while anything writes to it, and builds what
the page shows (the table rows, the graph and its layout, the disconnectivity picture) into a
:class:`Snapshot`. The page's periodic callback only takes the newest snapshot, so neither
SQLite nor matplotlib ever runs on the UI thread.

A *landscape* is one molecule with one model, one set of hopping settings and one "same minimum"
test (the store's tolerances): one directory
(``<root>/landscape-K``) with one store. Explore again on the same landscape continues it (each
walker hops "Hops per walker" more times, from where it stopped); another molecule, model or
setting starts a new landscape. Nothing here knows Panel.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ase
import networkx as nx
import numpy as np

from so3krates.explore import (
    Exploration, ExplorationConfig, MatchTolerances, MinimaStore, Progress, build_graph, disconnectivity_plot,
    quench_frames,
)
from so3krates.viz.landscape import graph_layout

REFRESH_S = 0.5  # store reads while something writes to it
DISCONNECTIVITY_EVERY_S = 2.0  # matplotlib redraws at most this often while the graph grows
QUENCH_WAIT_S = 600.0  # close(): how long the clean-up waits for a quench still writing the directory


@dataclasses.dataclass
class Landscape:
    """One molecule + model + hopping settings + "same minimum" tolerances: a directory with its store."""

    index: int
    directory: Path
    key: tuple  # (model key, numbers, hopping settings, tolerances)
    title: str
    model_label: str
    atoms: ase.Atoms
    model: Any
    store: MinimaStore


@dataclasses.dataclass
class Snapshot:
    """What the page shows, built off the UI thread (energies in eV; the page converts)."""

    version: int
    landscape: int  # Landscape.index
    minima: list  # store Minimum objects, lowest first (with positions)
    graph: nx.Graph
    layout: dict  # node -> (x, y)
    exploration: Exploration | None  # whose progress this is
    progress: Progress | None
    disconnectivity: bytes | None  # PNG, in ``unit``
    unit: str
    # a committee's per-atom force uncertainty (n,) eV/Å at each minimum (by id); empty otherwise
    uncertainty: dict = dataclasses.field(default_factory=dict)


class ExploreSession:
    """The explorations of one page, each on its landscape; see the module docstring."""

    def __init__(self, root: str | Path | None = None):
        """``root``: where the landscapes go; None: a new temporary directory (made with the first
        landscape, so a page that never explores leaves nothing behind), removed by close()."""
        self.owns_root = root is None
        self._root = None if root is None else Path(root)
        self.landscape: Landscape | None = None
        self.exploration: Exploration | None = None
        self.unit = "eV"
        self._quench_done = threading.Event()  # set while no quench writes (close() waits on it)
        self._quench_done.set()
        self.messages: list[tuple[str, str]] = []  # (kind, text) for the page: "quenched", "error"
        self._snapshot: Snapshot | None = None
        self._version = 0
        self._lock = threading.Lock()
        self._poke = threading.Event()
        self._closed = threading.Event()
        self._refresher: threading.Thread | None = None
        self._minimum_uncertainty: dict[int, dict[int, np.ndarray]] = {}  # landscape -> minimum id -> (n,)
        self._count = 0

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="so3krates-explore-"))
        return self._root

    # --- landscapes -------------------------------------------------------------------------

    def landscape_for(self, atoms: ase.Atoms, model, model_key: str, title: str, model_label: str,
                      hopping: dict, tolerances: MatchTolerances | None = None) -> Landscape:
        """The current landscape if it is this one, else a new one (new directory, empty store).

        ``tolerances`` (the store's "same minimum" test; the library's defaults when None) are
        part of the landscape: minima merged under one RMSD cannot be told apart under another,
        so a new tolerance starts a new store rather than mixing two rules in one."""
        tolerances = MatchTolerances() if tolerances is None else tolerances
        key = (model_key, tuple(int(z) for z in atoms.numbers), json.dumps(hopping, sort_keys=True),
               json.dumps(dataclasses.asdict(tolerances), sort_keys=True))
        if self.landscape is not None and self.landscape.key == key:
            return self.landscape
        if self.busy:
            raise RuntimeError(f"the exploration of {self.landscape.title} is still running: stop it first")
        self._count += 1
        directory = self.root / f"landscape-{self._count}"
        directory.mkdir(parents=True)
        store = MinimaStore(directory / "minima.sqlite", atoms.numbers, tolerances)
        self.landscape = Landscape(self._count, directory, key, title, model_label, atoms.copy(), model, store)
        self.exploration = None
        self._ensure_refresher()
        self.poke()
        return self.landscape

    @property
    def busy(self) -> bool:
        """An exploration or a quench is (still) writing to the current landscape."""
        return self.exploring or self.quenching

    @property
    def exploring(self) -> bool:
        """The exploration's driver is running or paused (after Stop: until it has ended)."""
        return self.exploration is not None and self.exploration.active

    @property
    def quenching(self) -> bool:
        """Frames are being relaxed into the current landscape's store."""
        return not self._quench_done.is_set()

    # --- exploration ------------------------------------------------------------------------

    def explore(self, landscape: Landscape, config: ExplorationConfig) -> Exploration:
        """Start (or continue) exploring ``landscape``: every walker hops ``config.hops`` more times."""
        if self.exploring:
            raise RuntimeError("an exploration is running: pause or stop it first")
        target = self._hops_done_per_walker(landscape) + config.hops
        # the walkers match minima as the landscape's store does
        config = dataclasses.replace(config, hops=target, tolerances=landscape.store.tolerances)
        description = {"molecule": landscape.title, "model": landscape.model_label}
        exploration = Exploration(landscape.atoms, landscape.model, landscape.directory, config,
                                  description=description)
        self.exploration = exploration
        exploration.start()
        self._ensure_refresher()
        self.poke()
        return exploration

    @staticmethod
    def _hops_done_per_walker(landscape: Landscape) -> int:
        """The most hops any walker of this landscape has made (its state files say); a damaged
        state file is an error naming it (continuing past it would redo or skip that walker's hops)."""
        done = 0
        for path in sorted((landscape.directory / "walkers").glob("walker*.json")):
            try:
                done = max(done, int(json.loads(path.read_text())["hop"]))
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ValueError(f"the walker state {path} is damaged ({type(error).__name__}: {error}); "
                                 "remove it to start that walker afresh") from None
        return done

    def pause(self) -> None:
        if self.exploration is not None:
            self.exploration.pause()
        self.poke()

    def resume(self) -> None:
        if self.exploration is not None:
            self.exploration.resume()
        self.poke()

    def stop(self) -> None:
        """No new hops; the driver finishes in the background (never waited for here)."""
        if self.exploration is not None:
            self.exploration.stop(wait=False)
        self.poke()

    # --- quenching MD frames ----------------------------------------------------------------

    def quench(self, landscape: Landscape, frames: np.ndarray, energies: np.ndarray, *, fmax: float,
               max_steps: int = 2000) -> None:
        """Relax MD frames into ``landscape``'s store on a worker thread (transitions between
        successive frames that relax to different minima); a message reports the outcome."""
        if self.quenching:
            raise RuntimeError("frames are being quenched already")
        self._quench_done.clear()
        frames, energies = np.array(frames, np.float64), np.array(energies, np.float64)
        self._count_quench = getattr(self, "_count_quench", 0) + 1
        prefix = f"md{self._count_quench}"

        def work():
            try:
                before = len(landscape.store)
                ids = quench_frames(frames, energies, landscape.atoms, landscape.model, landscape.store,
                                    found_by=prefix, key_prefix=prefix, fmax=fmax, max_steps=max_steps)
                found = [i for i in ids if i is not None]
                new = len(landscape.store) - before
                self._say("quenched", f"{len(frames)} MD frames relaxed into {len(set(found))} minima "
                                      f"({new} new, {len(frames) - len(found)} not converged)")
            except Exception as error:  # noqa: BLE001 (shown on the page)
                self._say("error", f"quenching failed: {type(error).__name__}: {error}")
            finally:
                self._quench_done.set()
                self.poke()

        threading.Thread(target=work, daemon=True, name="so3krates-quench").start()
        self._ensure_refresher()
        self.poke()

    def _say(self, kind: str, text: str) -> None:
        with self._lock:
            self.messages.append((kind, text))

    def drain_messages(self) -> list[tuple[str, str]]:
        with self._lock:
            out, self.messages = self.messages, []
        return out

    # --- snapshots --------------------------------------------------------------------------

    def set_unit(self, unit: str) -> None:
        self.unit = unit
        self.poke()

    def poke(self) -> None:
        """Read the store again now (a new landscape, a unit, a state change)."""
        self._poke.set()

    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def _ensure_refresher(self) -> None:
        if self._refresher is None or not self._refresher.is_alive():
            self._refresher = threading.Thread(target=self._refresh_loop, daemon=True, name="so3krates-refresh")
            self._refresher.start()

    def _refresh_loop(self) -> None:
        shown = None  # what the last snapshot showed
        layout, layout_of = {}, None
        png, png_key, png_time = None, None, 0.0
        while not self._closed.is_set():
            self._poke.wait(REFRESH_S)
            self._poke.clear()
            landscape, exploration, unit = self.landscape, self.exploration, self.unit
            if self._closed.is_set() or landscape is None:
                continue  # (there is a landscape before the refresher starts)
            busy = self.busy  # read first: what follows sees everything written before it ended
            try:
                progress = exploration.progress() if exploration is not None else None
                minima, transitions = landscape.store.minima(), landscape.store.transitions()
                graph = build_graph(minima, transitions)
                if layout_of != landscape.index:
                    layout, layout_of = {}, landscape.index
                layout = graph_layout(graph, layout)
                content = (landscape.index, [(m.id, m.count) for m in minima],
                           [(t.first, t.second, t.count, t.barrier) for t in transitions], unit)
                if not minima:
                    png, png_key = None, content
                elif content != png_key and (not busy or time.monotonic() - png_time > DISCONNECTIVITY_EVERY_S
                                             or png_key is None or png_key[0] != landscape.index or png_key[3] != unit):
                    png, png_key, png_time = self._disconnectivity(graph, unit), content, time.monotonic()
                if (content, progress, png_key) != shown:
                    shown = (content, progress, png_key)
                    self._version += 1
                    self._snapshot = Snapshot(self._version, landscape.index, minima, graph, dict(layout),
                                              exploration, progress, png, unit, self._uncertainties(landscape, minima))
            except Exception as error:  # noqa: BLE001 (a view: say so and keep going)
                self._say("error", f"reading the minima store failed: {type(error).__name__}: {error}")
                png_key = None
            if not busy and png_key == shown[2] if shown else False:
                self._poke.wait()  # nothing writes and everything is drawn: sleep until poked

    def _uncertainties(self, landscape: Landscape, minima: list) -> dict:
        """A committee's per-atom force uncertainty at each minimum, computed once per minimum on
        this (the refresher's) thread: the page colours the minimum shown by it."""
        model = landscape.model
        if getattr(model, "members", None) is None:
            return {}
        known = self._minimum_uncertainty.setdefault(landscape.index, {})
        for minimum in minima:
            if minimum.id not in known:
                image = landscape.atoms.copy()
                image.positions = minimum.positions
                known[minimum.id] = np.asarray(model.calculate(image, dtype="float32")["uncertainty"], np.float32)
        return dict(known)

    @staticmethod
    def _disconnectivity(graph: nx.Graph, unit: str) -> bytes:
        figure = disconnectivity_plot(graph, energy_unit=unit)
        figure.set_size_inches(max(4.0, min(12.0, 0.3 * graph.number_of_nodes() + 2.5)), 3.6)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
        return buffer.getvalue()

    def close(self) -> None:
        """The page is gone: stop the exploration (its Dask cluster closes with it) and the threads;
        a temporary root is removed once the exploration's driver has let go of its files (on a
        thread of its own: this returns at once)."""
        self._closed.set()
        self._poke.set()
        exploration, root = self.exploration, self._root
        if exploration is not None:
            exploration.stop(wait=False)

        def remove() -> None:
            if exploration is not None:
                exploration.stop(wait=True, timeout=120)
            if not self._quench_done.wait(QUENCH_WAIT_S):
                return  # a quench still writes there after minutes: better left behind than broken
            shutil.rmtree(root, ignore_errors=True)

        if self.owns_root and root is not None:
            threading.Thread(target=remove, daemon=True, name="so3krates-explore-cleanup").start()

