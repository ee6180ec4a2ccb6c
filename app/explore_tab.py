"""The dashboard's Explore tab: minima hopping on the MD tab's molecule and model, watched live.

Layout and callbacks only (built once per browser session by ``main.py``): the exploration, the
MD quenching and every read of the minima store run off the UI thread in ``explore_session.py``;
the tab's periodic callback takes the newest snapshot and updates the status, the table, the
graph and the disconnectivity picture. Table and graph conversions come from
``so3krates.viz.landscape``.

Buttons: **Explore** starts (or continues the current landscape with more hops per walker),
**Pause** holds the walkers after the hops in flight and then reads **Resume**, **Stop** ends
the run (the minima stay; Explore continues from there). A click on a graph node or a table row
shows that minimum in the 3D viewer; with **Compare** on, the last two minima clicked are shown
side by side, the second superposed onto the first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
from bokeh.models.widgets.tables import NumberFormatter

from explore_session import ExploreSession  # app/ is on sys.path while Bokeh runs main.py
from so3krates.checks import UNCERTAINTY_COLOR_SCALE
from so3krates.data.units import ENERGY_UNITS
from so3krates.explore import ExplorationConfig, HoppingConfig, MatchTolerances, aligned_rmsd
from so3krates.explore.store import equivalent_atom_classes
from so3krates.viz import MoleculeViewer
from so3krates.viz.landscape import minima_table, relative_energy_column, superpose

BACKENDS = {"Threads": "threads", "Dask (local cluster)": "local"}
TICK_MS = 250
MAX_QUENCH_FRAMES = 100  # recorded frames relaxed per "Quench frames into Explore" (evenly spaced)
# short escapes and a looser force threshold than the library defaults: a hop of a small molecule
# takes a fraction of a second, so the graph grows while one watches
HOPPING = dict(md_minima=2, md_max_steps=400, md_chunk_steps=50, fmax=0.05, relax_max_steps=1000)
NODE_COLUMNS = ("x", "y", "index", "energy", "visits", "size", "found_by")


@dataclasses.dataclass
class Target:
    """What the MD tab has chosen: the structure, the model and how to name them."""

    atoms: Any
    model: Any
    model_key: str
    title: str
    model_label: str


class ExploreTab:
    """The widgets, views and callbacks of one page's Explore tab.

    ``target()`` returns the MD tab's current :class:`Target`; ``units`` is the MD tab's unit
    toggle (the tab shows its own, kept equal both ways); ``out_dir`` holds the landscapes (None:
    a temporary directory removed by close()); ``report(text)`` shows a line in the MD tab's status.
    """

    def __init__(self, target: Callable[[], Target], units: pn.widgets.RadioButtonGroup,
                 out_dir: str | Path | None = None, report: Callable[[str], None] = lambda text: None):
        self.target, self.md_units, self.report = target, units, report
        self.session = ExploreSession(out_dir)
        self.shown_version = 0
        self.selected: list[int] = []  # minimum ids shown: one, or two in Compare mode
        self.syncing = False  # a selection is being mirrored between graph and table
        self.minima: dict[int, Any] = {}  # id -> store Minimum of the last snapshot
        self.node_ids: list[int] = []  # the graph's node order (a tap gives indices into it)
        self.landscape = None  # index of the landscape shown
        self.drawn = None  # what the table and graph show
        self.paused = False  # Pause pressed (the button reads Resume)
        self.stopping = False  # Stop pressed, the driver not yet ended

        self._widgets(units)
        self._graph()
        self._connect(units)
        self.layout = self._layout()
        self.callback = pn.state.add_periodic_callback(self.tick, period=TICK_MS)

    def _widgets(self, units: pn.widgets.RadioButtonGroup) -> None:
        self.explore_button = pn.widgets.Button(name="Explore", button_type="primary", width=80)
        self.pause_button = pn.widgets.Button(name="Pause", width=80, disabled=True)
        self.stop_button = pn.widgets.Button(name="Stop", width=80, disabled=True)
        self.walkers = pn.widgets.IntInput(name="Walkers", value=2, start=1, end=4, step=1)
        self.hops = pn.widgets.IntInput(name="Hops per walker", value=25, start=1, end=10_000, step=5)
        self.temperature = pn.widgets.FloatInput(name="Escape temperature (K)", value=1000.0, start=1.0, end=20_000.0,
                                                 step=50.0)
        # the store's "same minimum" RMSD: on a flat torsional landscape two relaxations of one
        # conformer can differ by ~0.3 Å, so the library's 0.1 Å may list one conformer several times
        self.same_minimum = pn.widgets.FloatInput(name="Same minimum within (Å RMSD)",
                                                  value=MatchTolerances().rmsd, start=0.01, end=2.0, step=0.05)
        self.backend = pn.widgets.RadioButtonGroup(name="Backend", options=list(BACKENDS), value="Threads",
                                                   button_type="default")
        self.units = pn.widgets.RadioButtonGroup(name="Energy unit", options=list(units.options), value=units.value)
        self.compare = pn.widgets.Toggle(name="Compare", value=False, width=100)
        self.status = pn.pane.Markdown("Press **Explore** to start minima hopping on the MD tab's molecule.",
                                       css_classes=["so3k-explore-status"], margin=(0, 10))
        self.alert = pn.pane.Alert("", alert_type="danger", visible=False, css_classes=["so3k-explore-alert"])
        self.table = pn.widgets.Tabulator(self._table(None), show_index=False, disabled=True,
                                          selectable=2,  # Compare: two rows; otherwise the page keeps one
                                          sortable=False, height=300, sizing_mode="stretch_width",
                                          titles={"found_by": "found by"},
                                          formatters=self._formatters(),
                                          css_classes=["so3k-minima"])
        self.viewer = MoleculeViewer(height=330, sizing_mode="stretch_width", css_classes=["so3k-minimum-view"])
        self.second_viewer = MoleculeViewer(height=330, sizing_mode="stretch_width", visible=False,
                                            css_classes=["so3k-second-view"])
        self.comparison = pn.pane.Markdown("Click a node of the graph or a row of the table to see that minimum.",
                                           css_classes=["so3k-comparison"], margin=(0, 10))
        self.disconnectivity = pn.pane.PNG(None, height=330, sizing_mode="stretch_width")

    def _graph(self) -> None:
        """The PES graph: edges and nodes redrawn from one Pipe; a tap on a node selects it."""
        self.pipe = hv.streams.Pipe(data=self._graph_data(None))
        nodes = hv.DynamicMap(self._nodes, streams=[self.pipe])
        self.graph = hv.DynamicMap(self._edges, streams=[self.pipe]) * nodes
        self.tap = hv.streams.Selection1D(source=nodes)
        self.tap.add_subscriber(self.on_tap)

    def _connect(self, units: pn.widgets.RadioButtonGroup) -> None:
        self.explore_button.on_click(self.on_explore)
        self.pause_button.on_click(self.on_pause)
        self.stop_button.on_click(self.on_stop)
        self.table.param.watch(self.on_table_selection, "selection")
        self.compare.param.watch(self.on_compare, "value")
        self.units.param.watch(self.on_units, "value")
        self.md_units.param.watch(self.on_md_units, "value")
        self.session.set_unit(units.value)

    def _layout(self) -> pn.Row:
        controls = pn.Column(
            self.walkers, self.hops, self.temperature, self.same_minimum,
            pn.pane.Markdown("**Backend**", margin=(0, 10)), self.backend,
            pn.Row(self.explore_button, self.pause_button, self.stop_button),
            pn.pane.Markdown("**Energy unit**", margin=(0, 10)), self.units, self.compare,
            pn.pane.Markdown("Explore uses the molecule and model chosen on the MD tab. Pause holds the walkers "
                             "(the button then reads Resume); Stop ends the run and keeps the minima. Turn "
                             "Compare on and click two minima to see them side by side, superposed.",
                             margin=(0, 10), styles={"font-size": "0.85em"}),
            width=330,
        )
        main = pn.Column(
            self.status, self.alert,
            pn.Row(pn.pane.HoloViews(self.graph, sizing_mode="stretch_width", height=360, css_classes=["so3k-graph"]),
                   self.disconnectivity, sizing_mode="stretch_width"),
            pn.Row(self.table, pn.Column(self.comparison, pn.Row(self.viewer, self.second_viewer,
                                                                 sizing_mode="stretch_width"),
                                         sizing_mode="stretch_width"), sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )
        return pn.Row(controls, main, sizing_mode="stretch_width")

    # --- views ------------------------------------------------------------------------------

    @property
    def unit(self) -> str:
        return self.units.value

    def _table(self, snapshot) -> pd.DataFrame:
        return minima_table(snapshot.minima if snapshot is not None else [], self.unit)

    def _formatters(self) -> dict:
        return {relative_energy_column(self.unit): NumberFormatter(format="0.0000")}

    def _graph_data(self, snapshot) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        """(nodes, edges, unit) for the graph: y is the energy above the lowest minimum."""
        unit = self.unit
        if snapshot is None or snapshot.graph.number_of_nodes() == 0:
            nodes = pd.DataFrame({c: np.zeros(0, float if c != "found_by" else object) for c in NODE_COLUMNS})
            return nodes, pd.DataFrame({"source": [], "target": [], "crossings": [], "barrier": []}), unit
        graph, scale = snapshot.graph, 1.0 / ENERGY_UNITS[unit]
        lowest = min(e for _, e in graph.nodes(data="energy"))
        ids = sorted(graph.nodes)  # by id: a new minimum is appended, a click's index stays valid
        visits = np.array([graph.nodes[n]["count"] for n in ids], float)
        nodes = pd.DataFrame({
            "x": [snapshot.layout[n][0] for n in ids],
            "y": [(graph.nodes[n]["energy"] - lowest) * scale for n in ids],
            "index": ids,
            "energy": [(graph.nodes[n]["energy"] - lowest) * scale for n in ids],
            "visits": visits,
            "size": 8.0 + 5.0 * np.sqrt(np.minimum(visits, 100.0)),
            "found_by": [graph.nodes[n]["found_by"] for n in ids],
        })
        edges = pd.DataFrame({
            "source": [u for u, v in graph.edges], "target": [v for u, v in graph.edges],
            "crossings": [graph.edges[e]["count"] for e in graph.edges],
            "barrier": [(graph.edges[e]["barrier"] - lowest) * scale for e in graph.edges],
        })
        return nodes, edges, unit

    def _edges(self, data) -> hv.Graph:
        """The transitions (hover: crossings and barrier); the minima are drawn by ``_nodes`` on top."""
        nodes, edges, unit = data
        node_element = hv.Nodes(nodes, kdims=["x", "y", "index"], vdims=["energy", "visits", "size", "found_by"])
        graph = hv.Graph((edges, node_element), kdims=["source", "target"], vdims=["crossings", "barrier"])
        return graph.opts(node_size=0, node_alpha=0, edge_color="#9a9a9a", edge_line_width=1.5,
                          edge_hover_line_color="black", inspection_policy="edges", tools=["hover"])

    def _nodes(self, data) -> hv.Points:
        """The minima: colour = energy, size = visits; a click selects (Selection1D)."""
        nodes, edges, unit = data
        points = hv.Points(nodes, kdims=["x", "y"], vdims=["index", "energy", "visits", "size", "found_by"])
        return points.opts(
            color="energy", cmap="viridis", size="size", colorbar=True, clabel=f"ΔE ({unit})", line_color="black",
            tools=["hover", "tap"], xaxis=None, ylabel=f"energy above the lowest minimum ({unit})",
            title="PES graph (colour: energy, size: visits)", responsive=True, height=360,
            framewise=True, padding=0.1, show_grid=True, nonselection_alpha=0.5, selection_line_color="red",
            selection_line_width=3, hover_tooltips=[("minimum", "@index"), (f"ΔE ({unit})", "@energy{0.0000}"),
                                                     ("visits", "@visits"), ("found by", "@found_by")],
        )

    # --- the periodic callback ----------------------------------------------------------------

    def tick(self) -> None:
        for kind, text in self.session.drain_messages():
            if kind == "error":
                self.show_error(text)
            else:
                self.report(f"**Quenched** {text}: see the Explore tab.")
                self.status.object = f"**Quenched** {text}."
        snapshot = self.session.snapshot()
        if snapshot is not None and snapshot.version != self.shown_version:
            self.show(snapshot)
        self.update_buttons(snapshot)

    def show(self, snapshot) -> None:
        self.shown_version = snapshot.version
        if snapshot.landscape != self.landscape:  # a new landscape: nothing of the old one stays selected
            self.landscape, self.selected = snapshot.landscape, []
            self._show_second(False)
        self.minima = {m.id: m for m in snapshot.minima}
        table = self._table(snapshot)
        drawn = (table.to_json(), sorted(snapshot.graph.edges(data="count")), self.unit)
        if drawn != self.drawn:  # progress alone (hops/min) changes nothing drawn: keep the selection
            self.drawn = drawn
            self.node_ids = sorted(snapshot.graph.nodes)
            self.syncing = True
            try:
                if self.table.formatters.keys() != self._formatters().keys():
                    # a new formatter object rebuilds every column in the browser: only for a new unit
                    self.table.formatters = self._formatters()
                self.table.value = table
                self.table.selection = self._rows(self.selected)
            finally:
                self.syncing = False
            self.pipe.send(self._graph_data(snapshot))
            if len(self.selected) == 1 and self.selected[0] in self.minima:
                # a lower minimum or another visit since it was chosen: the line follows the table
                self.comparison.object = self.single_text(self.minima[self.selected[0]])
        if snapshot.disconnectivity is not None:
            self.disconnectivity.object = snapshot.disconnectivity
        if not self.selected and snapshot.minima:
            self.select(snapshot.minima[0].id)  # the lowest minimum, until one is clicked
        if snapshot.progress is not None and snapshot.exploration is self.session.exploration \
                and not self.session.quenching:
            self.status.object = self.progress_text(snapshot)
            if snapshot.progress.state == "failed":
                self.show_error(f"The exploration failed: {snapshot.progress.message}")

    def progress_text(self, snapshot) -> str:
        p = snapshot.progress
        state = {"running": "Exploring", "paused": "Paused", "stopped": "Stopped", "finished": "Finished",
                 "failed": "Failed", "idle": "Starting"}.get(p.state, p.state)
        if p.state == "running" and p.hops_done == 0:
            state = "Starting (relaxing the start; a first run compiles the escape MD for a while)"
        where = f" · {self.session.landscape.title}" if self.session.landscape is not None else ""
        compiled = f" · {p.compilations} programs compiled"
        if p.last_compile_hop is not None:
            compiled += f" (last at hop {p.last_compile_hop})"
        note = f" · {p.message}" if p.message and p.state != "failed" else ""  # e.g. a failed graph export
        same = snapshot.exploration.config.tolerances.rmsd
        return (f"**{state}**{where} · hops {p.hops_done}/{p.hops_total} · minima found {p.minima_found} · "
                f"unique {p.unique} (RMSD > {same:g} Å) · transitions {p.transitions} · "
                f"{p.hops_per_minute:.0f} hops/min{compiled}{note}")

    def state(self, snapshot) -> str:
        """The exploration's state as the page knows it (a snapshot may predate the last Explore)."""
        exploration = self.session.exploration
        if exploration is None:
            return "idle"
        if snapshot is None or snapshot.exploration is not exploration or snapshot.progress is None:
            return "running"  # just started: its first snapshot is on the way
        return snapshot.progress.state

    def update_buttons(self, snapshot) -> None:
        state = self.state(snapshot)
        if state not in ("running", "paused"):
            self.paused = self.stopping = False
        active = state in ("running", "paused") and not self.stopping
        self.explore_button.disabled = state in ("running", "paused") or self.session.quenching
        self.pause_button.disabled = self.stop_button.disabled = not active
        self.pause_button.name = "Resume" if self.paused else "Pause"

    # --- selection: graph taps and table rows -----------------------------------------------------

    def _rows(self, ids: list[int]) -> list[int]:
        order = list(self.table.value["id"]) if len(self.table.value) else []
        return [order.index(i) for i in ids if i in order]

    def on_tap(self, index: list[int]) -> None:
        if self.syncing or not index:
            return
        picked = [self.node_ids[i] for i in index if 0 <= i < len(self.node_ids)]
        if picked:
            self.select(picked[-1])

    def on_table_selection(self, event) -> None:
        if self.syncing:
            return
        ids = [int(self.table.value["id"].iloc[i]) for i in event.new if 0 <= i < len(self.table.value)]
        new = [i for i in ids if i not in self.selected]
        if new:
            self.select(new[-1])
        elif ids and ids != self.selected:
            self.selected = ids[-2:] if self.compare.value else ids[-1:]
            self.show_selection()

    def select(self, minimum_id: int) -> None:
        """Show ``minimum_id``; in Compare mode next to the one chosen before it."""
        if self.compare.value:
            kept = [i for i in self.selected if i != minimum_id]
            self.selected = kept[-1:] + [minimum_id]
        else:
            self.selected = [minimum_id]
        self.show_selection()

    def show_selection(self) -> None:
        self.syncing = True
        try:
            self.table.selection = self._rows(self.selected)
        finally:
            self.syncing = False
        chosen = [self.minima[i] for i in self.selected if i in self.minima]
        landscape = self.session.landscape
        if not chosen or landscape is None:
            return
        numbers = landscape.atoms.numbers
        first = chosen[0]
        scale = 1.0 / ENERGY_UNITS[self.unit]
        self.viewer.set_structure(numbers=numbers, positions=first.positions, title=f"minimum {first.id}")
        self._color(self.viewer, first.id)
        if len(chosen) < 2:
            self._show_second(False)
            self.comparison.object = self.single_text(first)
            return
        second = chosen[1]
        moved, rmsd = superpose(second.positions, first.positions)
        classes = equivalent_atom_classes(numbers, first.positions)
        best = aligned_rmsd(second.positions, first.positions, classes)
        self.second_viewer.set_structure(numbers=numbers, positions=moved, title=f"minimum {second.id}")
        self._color(self.second_viewer, second.id)
        self._show_second(True)
        self.comparison.object = (
            f"**Minimum {first.id}** (left) vs **minimum {second.id}** (right, superposed onto the left): "
            f"ΔE = {(second.energy - first.energy) * scale:+.4f} {self.unit} · RMSD {rmsd:.3f} Å after rotation "
            f"(same atom order) · {best:.3f} Å allowing inversion and equivalent-atom swaps (the store's measure)")

    def _color(self, viewer, minimum_id: int) -> None:
        """A committee's minima are coloured by the per-atom force uncertainty there."""
        snapshot = self.session.snapshot()
        uncertainty = None if snapshot is None else snapshot.uncertainty.get(minimum_id)
        if uncertainty is not None:
            viewer.color_atoms(uncertainty, UNCERTAINTY_COLOR_SCALE, "committee force uncertainty (eV/Å)")

    def single_text(self, minimum) -> str:
        """One minimum's line: its energy above the lowest found so far, visits, finder."""
        lowest = min(m.energy for m in self.minima.values())
        return (f"**Minimum {minimum.id}**: ΔE = {(minimum.energy - lowest) / ENERGY_UNITS[self.unit]:.4f} "
                f"{self.unit} above the lowest · {minimum.count} visits · found by {minimum.found_by}")

    def _show_second(self, visible: bool) -> None:
        """Show or hide the second viewer; the first one changes width, so both are recentred
        once the browser has laid them out again."""
        if self.second_viewer.visible == visible:
            return
        self.second_viewer.visible = visible
        if pn.state.curdoc is not None:
            pn.state.curdoc.add_timeout_callback(self._recentre, 400)

    def _recentre(self) -> None:
        self.viewer.reset_view()
        if self.second_viewer.visible:
            self.second_viewer.reset_view()

    # --- buttons ----------------------------------------------------------------------------

    def show_error(self, message: str) -> None:
        self.alert.object = message
        self.alert.visible = True

    def clear_error(self) -> None:
        self.alert.visible = False
        self.alert.object = ""

    def hopping(self) -> HoppingConfig:
        return HoppingConfig(temperature=float(self.temperature.value), **HOPPING)

    def tolerances(self) -> MatchTolerances:
        """The store's "same minimum" test; an empty or non-positive field is a ValueError."""
        value = self.same_minimum.value
        if value is None:
            raise ValueError("enter the same-minimum RMSD (Å)")
        return MatchTolerances(rmsd=float(value))

    def on_explore(self, event) -> None:
        self.clear_error()
        target = self.target()
        try:
            hopping, tolerances = self.hopping(), self.tolerances()
            landscape = self.session.landscape_for(target.atoms, target.model, target.model_key, target.title,
                                                   target.model_label, hopping.to_dict(), tolerances)
            # (the session gives the walkers the landscape's tolerances)
            config = ExplorationConfig(walkers=int(self.walkers.value), hops=int(self.hops.value), hopping=hopping,
                                       scheduler=BACKENDS[self.backend.value])
            self.session.explore(landscape, config)
        except (RuntimeError, ValueError) as error:
            self.show_error(f"Cannot explore: {error}")
            return
        self.explore_button.disabled = True
        self.status.object = (f"**Starting** {config.walkers} walker{'s' if config.walkers > 1 else ''} on "
                              f"{target.title} ({len(target.atoms)} atoms) with {target.model_label}, "
                              f"{self.backend.value.lower()}…")

    def on_pause(self, event) -> None:
        self.paused = not self.paused
        if self.paused:
            self.session.pause()
            self.status.object = "**Pausing**: the hops in flight finish first…"
        else:
            self.session.resume()
        self.pause_button.name = "Resume" if self.paused else "Pause"

    def on_stop(self, event) -> None:
        self.session.stop()
        self.stopping = True
        self.pause_button.disabled = self.stop_button.disabled = True
        self.status.object = "**Stopping**: in-flight hops are dropped; the minima stay…"

    def on_compare(self, event) -> None:
        if not event.new:
            self.selected = self.selected[-1:]
        self.show_selection()

    def on_units(self, event) -> None:
        if self.md_units.value != event.new:
            self.md_units.value = event.new
        self.session.set_unit(event.new)
        snapshot = self.session.snapshot()
        if snapshot is not None:
            self.show(snapshot)
        self.show_selection()

    def on_md_units(self, event) -> None:
        if self.units.value != event.new:
            self.units.value = event.new

    # --- MD frames into the store ---------------------------------------------------------------

    def quench(self, frames: Sequence[np.ndarray], energies: np.ndarray) -> str:
        """Relax MD frames (at most MAX_QUENCH_FRAMES, evenly spaced) into the store of the MD
        tab's landscape; returns the line for the MD tab's status."""
        target = self.target()
        keep = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), MAX_QUENCH_FRAMES)).round().astype(int))
        frames, energies = np.stack([frames[i] for i in keep]), np.asarray(energies)[keep]
        hopping = self.hopping()
        landscape = self.session.landscape_for(target.atoms, target.model, target.model_key, target.title,
                                               target.model_label, hopping.to_dict(), self.tolerances())
        self.session.quench(landscape, frames, energies, fmax=hopping.fmax, max_steps=hopping.relax_max_steps)
        self.status.object = f"**Quenching** {len(frames)} MD frames of {target.title} into this store…"
        return f"**Quenching** {len(frames)} recorded frames into the Explore tab's minima store…"

    def close(self) -> None:
        self.callback.stop()
        self.session.close()
