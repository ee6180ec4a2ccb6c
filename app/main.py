"""so3krates dashboard: live molecular dynamics you can watch, steer and trust.

`panel serve app/` (see `make app`) runs this file once per browser session (a directory app:
the page is at /app). Layout and callbacks only: molecules, models, MD, relaxation, units and
file parsing all come from the `so3krates` library; `session.py` runs them off the UI thread.

Every session has its own simulation. A periodic callback (every 40 ms) takes what the worker
produced, sends the newest positions to the 3D viewer when the browser has drawn the previous
ones, and streams new points into the plots (bounded buffers: a long run does not slow the page).
"""

from __future__ import annotations

import functools
import io
import os
import time
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
from ase import units as units_ase
from panel.io import hold
from panel.io.resources import get_dist_path

from explore_tab import ExploreTab, Target  # app/ is on sys.path while Bokeh runs this file
from improve import ModelImprover, Subject
from model_tab import Frame, ModelTab
from session import Event, MDSession
from so3krates import catalog, configure, load_model
from so3krates.checks import UNCERTAINTY_COLOR_SCALE
from so3krates.compilation import compilations
from so3krates.data.units import ENERGY_UNITS
from so3krates.data.upload import MAX_ATOMS, MAX_BYTES, read_structure
from so3krates.md import MDConfig
from so3krates.potential import charge_and_multiplicity
from so3krates.system import StructureError
from so3krates.viz import MoleculeViewer

configure()  # an entry point: float64 for Relax, the compilation cache, compile counts for the status

pn.extension("filedropper", "tabulator", notifications=False)
hv.extension("bokeh", logo=False)
if pn.state.curdoc is not None:
    # Panel rewrites each component's stylesheet URLs for this document's "dist_url", which it sets
    # only when the page is first rendered; until then (and for a model built while that is unset)
    # the URLs point at cdn.holoviz.org, which an offline page cannot reach (seen once in CI, where
    # a page asked the CDN for its stylesheets). Set it now, to this server's own copy.
    pn.state.curdoc.template_variables.setdefault("dist_url", get_dist_path(cdn=False))

ENSEMBLES = {"NVE": "nve", "Langevin": "langevin", "Nosé–Hoover": "nose-hoover", "NPT": "npt"}
BAR = units_ase.bar  # eV/Å³ per bar
AMU_PER_A3_IN_G_PER_CM3 = 1.66053906660  # a density of 1 amu/Å³ in g/cm³
DISPLAY_UNITS = ("eV", "kcal/mol", "kJ/mol")
CHUNK_SIZES = (10, 20, 50, 100, 200, 500)
FRAMES_PER_CHUNK = 10  # recorded frames per chunk (record_every = chunk size / 10)
PLOT_POINTS = 4000  # points kept in each live plot
TICK_MS = 40
PLOT_EVERY_S = 0.25
PLAYBACK_LAG = 8  # frames waiting for the viewer beyond this are skipped (stay live)
# checkpoint directories the server operator allows besides the shipped models (os.pathsep list)
MODEL_ROOTS = [catalog.SHIPPED_MODELS] + [
    Path(p) for p in os.environ.get("SO3KRATES_APP_MODEL_DIRS", "").split(os.pathsep) if p
]
# models this page made ("Improve model"): key -> label; their directories are allowed like MODEL_ROOTS
SESSION_MODELS: dict[str, str] = {}
PLOT_COLUMNS = ("time_ps", "potential", "kinetic", "total", "temperature", "density", "a", "b", "c")


# --- models and molecules ---------------------------------------------------------------------

def model_options() -> dict[str, str]:
    """Label -> key: built-in models, then checkpoint directories found under MODEL_ROOTS."""
    options = {label: key for key, label in catalog.builtin_models().items()}
    for root in MODEL_ROOTS[1:]:
        for config in sorted(root.glob("*/config.json")) if root.is_dir() else []:
            options[f"checkpoint: {config.parent}"] = f"dir:{config.parent}"
    return options


def get_model(key: str):
    if key.startswith("dir:"):
        path = Path(key[4:]).resolve()
        if key not in SESSION_MODELS and not any(path.is_relative_to(root.resolve()) for root in MODEL_ROOTS):
            raise ValueError(f"{path} is outside the model directories this server allows")
        return pn.state.as_cached(f"model:{path}", lambda: load_model(path))
    return pn.state.as_cached(f"model:{key}", lambda: catalog.load_builtin_model(key))


def model_name(key: str) -> str:
    """A model's short name for the picker and the status: "SO3LR", "Ethanol specialist", a folder."""
    if key in SESSION_MODELS:
        return SESSION_MODELS[key]
    return Path(key[4:]).name if key.startswith("dir:") else catalog.model_name(key)


def domain_text(key: str, atoms) -> str:
    """Whether ``atoms`` is inside the training domain of the model ``key``, for the status line
    (nothing for a checkpoint folder: its domain is its training data, which the app does not see)."""
    if key.startswith("dir:"):
        return ""
    domain = catalog.training_domain(key, atoms)
    return f"{'Inside' if domain.inside else '**Outside**'} its training domain: {domain.reason}."


def default_chunk(num_atoms: int) -> int:
    return 50 if num_atoms <= 20 else 20 if num_atoms <= 100 else 10


MOLECULES = catalog.builtin_molecules()
MODELS = model_options()
MODEL_LABELS = {key: label for label, key in MODELS.items()}
START = "ethanol" if "ethanol" in MOLECULES else next(iter(MOLECULES))

# --- widgets ------------------------------------------------------------------------------------

molecule = pn.widgets.Select(name="Molecule", options={m.picker_label(): n for n, m in MOLECULES.items()}, value=START)
upload = pn.widgets.FileDropper(name="Upload", max_file_size=f"{MAX_BYTES // 1_000_000}MB", multiple=False,
                                height=90, layout="compact")
model = pn.widgets.Select(name="Model", options=MODELS, value=MOLECULES[START].default_model)
charge = pn.widgets.IntInput(name="Total charge", value=0, start=-20, end=20, step=1,
                             description="the structure's total charge in e (models with charge inputs: SO3LR)")
ensemble = pn.widgets.RadioButtonGroup(name="Ensemble", options=list(ENSEMBLES), value="Langevin",
                                       button_type="default")
temperature = pn.widgets.FloatInput(name="Temperature (K)", value=300.0, start=1.0, end=5000.0, step=10.0)
timestep = pn.widgets.FloatInput(name="Timestep (fs)", value=0.5, start=0.05, end=20.0, step=0.1)
friction = pn.widgets.FloatInput(name="Friction (1/fs)", value=0.01, start=0.0, end=1.0, step=0.005)
pressure = pn.widgets.FloatInput(name="Pressure (bar)", value=1.0, start=-1e5, end=1e6, step=100.0, visible=False,
                                 description="NPT target pressure (periodic structures: Langevin thermostat and "
                                             "stochastic cell rescaling)")
chunk = pn.widgets.Select(name="Chunk size (steps per call)", options=list(CHUNK_SIZES),
                          value=default_chunk(len(MOLECULES[START].atoms())))
paced = pn.widgets.Checkbox(name="Show every frame (MD waits for the display)", value=True)
run_button = pn.widgets.Button(name="Run", button_type="primary", width=70)
pause_button = pn.widgets.Button(name="Pause", width=70, disabled=True)
stop_button = pn.widgets.Button(name="Stop", width=70, disabled=True)
reset_button = pn.widgets.Button(name="Reset", width=70)
relax_button = pn.widgets.Button(name="Relax", width=70)
quench_button = pn.widgets.Button(name="Quench frames into Explore", width=230, disabled=True)
units = pn.widgets.RadioButtonGroup(name="Energy unit", options=list(DISPLAY_UNITS), value="eV")
scrubber = pn.widgets.IntSlider(name="Recorded frame", start=0, end=1, value=0, disabled=True)
status = pn.pane.Markdown("Pick a molecule and press **Run**.", css_classes=["so3k-status"], margin=(0, 10))
alert = pn.pane.Alert("", alert_type="danger", visible=False, css_classes=["so3k-alert"])
viewer = MoleculeViewer(height=460, sizing_mode="stretch_width")


# --- the session's simulation -------------------------------------------------------------------

def md_config() -> MDConfig:
    size = int(chunk.value)
    return MDConfig(ensemble=ENSEMBLES[ensemble.value], temperature=float(temperature.value),
                    timestep=float(timestep.value), friction=float(friction.value), chunk_steps=size,
                    record_every=max(1, size // FRAMES_PER_CHUNK), pressure=float(pressure.value) * BAR)


def periodic(atoms) -> bool:
    """Periodic in all three directions: what constant pressure needs (the cell plots show then)."""
    return bool(np.all(atoms.pbc))


class Page:
    """This page's state on the UI thread: the session, what the viewer and plots have shown."""

    def __init__(self):
        atoms = MOLECULES[START].atoms()
        self.session = MDSession(atoms, get_model(model.value), md_config())
        self.session.max_backlog = FRAMES_PER_CHUNK if paced.value else None
        self.title = MOLECULES[START].label
        self.playback: list = []  # (positions, step, frame number) waiting for the viewer
        self.shown = None  # (frame number, step) the viewer shows; frame numbers count every recorded
        # frame since the load (History.dropped + index), so they survive the history's trimming
        self.playing = False  # new frames go to the viewer (not after Pause or Stop)
        self.last_push = 0.0
        self.plotted = 0  # frames of the history already in the plots
        self.last_plot = 0.0
        self.speed = None  # (steps/s, ns/day) of the last timed chunk
        self.last_compile_step = None  # the step of the last chunk that compiled a program
        self.switching = False  # a molecule change is updating the model widget
        self.last_upload = None  # (name, bytes) of the upload handled last
        self.uploads: dict = {}  # picker key -> (atoms, title) of this page's uploads
        viewer.set_structure(atoms, title=self.title)


page = Page()


def explore_target() -> Target:
    """The Explore tab explores what the MD tab shows: its starting structure and model."""
    return Target(page.session.atoms, page.session.model, model.value, page.title,
                  MODEL_LABELS.get(model.value, model.value))


def report(text: str) -> None:
    status.object = text


explore = ExploreTab(explore_target, units, report=report)  # its own temporary directory, removed with the session


def model_frame() -> Frame:
    """The Model tab checks the MD tab's current frame: the last recorded one (with its momenta and
    cell), or the starting structure; with the MD tab's model, timestep and temperature."""
    session, history = page.session, page.session.history
    atoms, momenta, step = session.current_atoms(), None, None
    if len(history):
        momenta, step = np.asarray(history.momenta[-1], float), int(history.columns["step"][-1])
        if np.any(atoms.pbc):  # NPT moves the cell
            atoms.set_cell(history.cells[-1], scale_atoms=False)
    return Frame(atoms, session.model, MODEL_LABELS.get(model.value, model.value), page.title,
                 float(timestep.value), float(temperature.value), momenta, step)


model_checks = ModelTab(model_frame)


def improve_subject() -> Subject:
    """Improve model refines the MD tab's model on its molecule (its loaded structure): a shipped
    specialist or a checkpoint folder, whose training data the refinement adds to."""
    key, label = model.value, model_name(model.value)
    atoms = page.session.atoms.copy()
    if key.startswith("dir:"):
        return Subject(atoms, page.title, label, Path(key[4:]))
    if key == catalog.SO3LR:
        return Subject(atoms, page.title, label, None, "SO3LR's training data is not part of this project, and "
                       "fine-tuning it on one molecule would forget the rest; improve a specialist model instead.")
    if (catalog.SHIPPED_MODELS / key / "config.json").is_file():
        return Subject(atoms, page.title, label, catalog.SHIPPED_MODELS / key)
    return Subject(atoms, page.title, label, None, "it is not a trained SO3krates model.")


def add_improved_model(label: str, directory: Path) -> None:
    """An improved model joins this page's model picker (it is not selected: MD keeps running as it is)."""
    key = f"dir:{directory}"
    SESSION_MODELS[key] = label
    MODEL_LABELS[key] = label
    page.switching = True
    try:
        model.options = {**model.options, label: key}
    finally:
        page.switching = False


improver = ModelImprover(improve_subject, add_improved_model)
energy_buffer = hv.streams.Buffer(pd.DataFrame({c: np.zeros(0) for c in PLOT_COLUMNS}), length=PLOT_POINTS,
                                  index=False)


def energy_plot(data):
    unit = units.value
    curves = [hv.Curve(data, "time_ps", (column, f"energy ({unit})"), label=column)
              for column in ("potential", "kinetic", "total")]
    # the legend above the plot, in one row of short names: inside, it covered the curves' start
    return hv.Overlay(curves).opts(legend_position="top", legend_cols=3, xlabel="time (ps)",
                                   title="Energy (potential, total: Δ from start)",
                                   ylabel=f"energy ({unit})", framewise=True)


def cell_plot(data):
    curves = [hv.Curve(data, "time_ps", (edge, "edge length (Å)"), label=f"|{edge}|") for edge in ("a", "b", "c")]
    return hv.Overlay(curves).opts(legend_position="top", legend_cols=3, xlabel="time (ps)", title="Cell edges",
                                   ylabel="edge length (Å)", framewise=True)


def density_plot(data):
    return hv.Curve(data, "time_ps", ("density", "density (g/cm³)")).opts(
        color="seagreen", title="Density", xlabel="time (ps)", framewise=True)


def temperature_plot(data):
    return hv.Curve(data, "time_ps", ("temperature", "temperature (K)")).opts(
        color="firebrick", title="Temperature", xlabel="time (ps)", framewise=True)


PLOT_OPTS = dict(responsive=True, height=230, tools=["hover"], show_grid=True)
energy_view = hv.DynamicMap(energy_plot, streams=[energy_buffer]).opts(hv.opts.Curve(**PLOT_OPTS))
temperature_view = hv.DynamicMap(temperature_plot, streams=[energy_buffer]).opts(hv.opts.Curve(**PLOT_OPTS))
cell_view = hv.DynamicMap(cell_plot, streams=[energy_buffer]).opts(hv.opts.Curve(**PLOT_OPTS))
density_view = hv.DynamicMap(density_plot, streams=[energy_buffer]).opts(hv.opts.Curve(**PLOT_OPTS))
# periodic structures only (the water box): the cell and density, which NPT moves
cell_plots = pn.Column(pn.pane.HoloViews(cell_view, sizing_mode="stretch_width"),
                       pn.pane.HoloViews(density_view, sizing_mode="stretch_width"),
                       sizing_mode="stretch_width", visible=False)


def plot_rows(start: int) -> pd.DataFrame:
    """History rows from ``start`` on, energies relative to the first frame, in the display unit."""
    history = page.session.history
    if len(history) == 0 or start >= len(history):
        return pd.DataFrame({c: np.zeros(0) for c in PLOT_COLUMNS})
    factor = 1.0 / ENERGY_UNITS[units.value]
    potential = history.column("potential_energy")
    reference = history.columns["potential_energy"][0]
    kinetic = history.column("kinetic_energy")
    cells = np.asarray(history.cells, float).reshape(-1, 3, 3)
    edges = np.linalg.norm(cells, axis=-1)  # |a|, |b|, |c| per frame
    volume = history.column("volume")
    mass = float(np.sum(page.session.atoms.get_masses()))
    density = np.where(volume > 0, mass / np.where(volume > 0, volume, 1.0), np.nan) * AMU_PER_A3_IN_G_PER_CM3
    rows = pd.DataFrame({
        "time_ps": history.column("time_fs") / 1000.0,
        "potential": (potential - reference) * factor,
        "kinetic": kinetic * factor,
        "total": (potential + kinetic - reference) * factor,
        "temperature": history.column("temperature"),
        "density": density,
        "a": edges[:, 0], "b": edges[:, 1], "c": edges[:, 2],
    })
    return rows.iloc[start:]


def replot() -> None:
    """Replace the plotted points (new run, new unit). The clear must be its own event: a Buffer
    plot streams what was appended since its last update, so a silent reset would only append."""
    energy_buffer.clear()
    energy_buffer.send(plot_rows(max(0, len(page.session.history) - PLOT_POINTS)))
    page.plotted = len(page.session.history)


# --- status ---------------------------------------------------------------------------------------

def show_error(message: str) -> None:
    alert.object = message
    alert.visible = True


def clear_error() -> None:
    alert.visible = False
    alert.object = ""


def energy_text(value_ev: float) -> str:
    return f"{value_ev / ENERGY_UNITS[units.value]:.4f} {units.value}"


def running_text() -> str:
    history = page.session.history
    parts = ["**Running**"]
    if page.speed is not None:
        parts.append(f"{page.speed[0]:,.0f} steps/s · {page.speed[1]:.2f} ns/day")
    if len(history):
        parts.append(f"step {history.columns['step'][-1]:,} · {history.columns['time_fs'][-1] / 1000:.3f} ps · "
                     f"T = {history.columns['temperature'][-1]:.0f} K · "
                     f"E_pot = {energy_text(history.columns['potential_energy'][-1])}")
        if np.isfinite(history.columns["pressure"][-1]):
            parts.append(f"P = {history.columns['pressure'][-1] / BAR:,.0f} bar · V = "
                         f"{history.columns['volume'][-1]:,.0f} Å³")
    if page.last_compile_step is not None:
        parts.append(compile_text(f"last at step {page.last_compile_step:,}"))
    return " · ".join(parts)


def compile_text(last: str) -> str:
    """How many XLA programs this server has compiled (JAX's own count): a warm-up's worth, then
    flat; a number that keeps growing while MD runs is a bug worth reporting."""
    return f"{compilations()} programs compiled in this server ({last})"


def update_buttons() -> None:
    busy = page.session.running
    run_button.disabled = busy
    pause_button.disabled = stop_button.disabled = not busy
    relax_button.disabled = busy
    scrubber.disabled = busy or len(page.session.history) < 2
    quench_button.disabled = len(page.session.history) == 0 or explore.session.quenching


# --- the periodic callback -------------------------------------------------------------------------

def handle(event: Event) -> None:
    session = page.session
    if event.kind == "compiling":
        status.object = f"**Compiling** ({event.message}; the first run of a molecule takes a few seconds)…"
    elif event.kind == "chunk":
        result = event.result
        session.history.extend(result, event.step_offset, event.time_offset)
        if page.playing:
            first = session.history.dropped + len(session.history) - result.num_frames
            for i in range(result.num_frames):
                page.playback.append((result.positions[i], int(result.step[i]) + event.step_offset, first + i,
                                      session.history.uncertainty[len(session.history) - result.num_frames + i]))
        if result.steps_done and not result.compiled and result.wall_s > 0:
            page.speed = (result.steps_done / result.wall_s, result.ns_per_day)
        if result.compiled:
            page.last_compile_step = int(result.step[-1]) + event.step_offset if result.num_frames else 0
        status.object = running_text()
    elif event.kind == "blowup":
        error = event.detail
        if event.result is not None and event.result.num_frames:
            session.history.extend(event.result, event.step_offset, event.time_offset)
        page.playback.clear()
        if len(session.history):
            update_scrubber()
            viewer.update_positions(session.history.positions[-1], frame=len(session.history) - 1)
        status.object = f"**Stopped by the {error.guard} guard** at step {error.step + event.step_offset:,}."
        show_error(f"Blow-up guard tripped: {event.message} The viewer shows the last good frame; "
                   "press Reset to start over (a smaller timestep or a lower temperature helps).")
    elif event.kind == "error":
        show_error(event.message)
        status.object = "**Stopped** by an error (see above)."
    elif event.kind == "relax":
        step = event.detail
        viewer.update_positions(step.positions, frame=step.step)
        status.object = (f"**Relaxing** (FIRE): step {step.step} · E = {energy_text(step.energy)} · "
                         f"max |F| = {step.max_force:.3f} eV/Å")
    elif event.kind == "relaxed":
        atoms, step = event.detail
        session.load(atoms, session.model, md_config())
        replot()
        outcome = "converged" if step.converged else f"NOT converged within {step.step} steps"
        status.object = (f"**Relaxed** ({outcome}): E = {energy_text(step.energy)}, max |F| = "
                         f"{step.max_force:.3f} eV/Å. This geometry is now the starting structure.")
    elif event.kind == "stopped" and event.detail == "md":
        flush_plot()  # a paused plot is complete
        if not session.finished and len(session.history):
            status.object = f"**Paused** at step {session.history.columns['step'][-1]:,}. Run continues."
        elif session.finished and not alert.visible:
            status.object = "**Stopped.** Scrub through the recorded frames or download them; Run starts over."
        update_scrubber()


def update_scrubber() -> None:
    """The scrubber on the newest recorded frame (its label names that frame's step)."""
    history = page.session.history
    n = len(history)
    show_scrubber(max(0, n - 1), history.columns["step"][-1] if n else None)


def show_scrubber(index: int, step: int | None) -> None:
    label = "Recorded frame" if step is None else f"Recorded frame (step {int(step):,})"
    scrubber.param.update(start=0, end=max(1, len(page.session.history) - 1), value=index, name=label)


def follow_scrubber() -> None:
    """While MD runs, the (disabled) scrubber points at the frame the viewer shows."""
    if page.shown is None:
        return
    number, step = page.shown
    index = number - page.session.history.dropped
    if 0 <= index < len(page.session.history) and index != scrubber.value:
        show_scrubber(index, step)


def tick() -> None:
    for event in page.session.drain():
        handle(event)
    now = time.monotonic()
    if tabs.active != 0:  # the MD viewer is not in the page: nothing to pace on, keep the newest frame
        del page.playback[:-1]
    if page.playback and (viewer.drawn or now - page.last_push > 0.5):
        if not paced.value:
            del page.playback[:-PLAYBACK_LAG]
        positions, step, number, uncertainty = page.playback.pop(0)
        # the viewer's "frame N" is the scrubber's N (the recorded frame), its label names the step
        viewer.update_positions(positions, frame=number - page.session.history.dropped)
        show_uncertainty(uncertainty)
        page.last_push, page.shown = now, (number, step)
    page.session.backlog = len(page.playback)
    if now - page.last_plot > PLOT_EVERY_S:
        flush_plot()
        follow_scrubber()
    update_buttons()


def show_uncertainty(uncertainty) -> None:
    """A committee's atoms coloured by their force uncertainty at the frame shown (a single model:
    element colours)."""
    if uncertainty is not None:
        viewer.color_atoms(uncertainty, UNCERTAINTY_COLOR_SCALE, "committee force uncertainty (eV/Å)")


def flush_plot() -> None:
    """Send the frames recorded since the last call to the plots."""
    history = page.session.history
    if len(history) > page.plotted:
        new = len(history) - page.plotted
        # the history is a bounded deque: count from its end
        energy_buffer.send(plot_rows(max(0, len(history) - min(new, PLOT_POINTS))))
        page.plotted = len(history)
        page.last_plot = time.monotonic()


# --- callbacks -------------------------------------------------------------------------------------

def one_page_update(callback):
    """The page sees everything ``callback`` changes at once: a new structure's status, picker,
    viewer and plots arrive in one message, never a status that names the new molecule beside a
    picker that still names the old one."""
    @functools.wraps(callback)
    def held(event) -> None:
        with hold():
            callback(event)
    return held


def load(atoms, title: str, model_key: str, note: str = "") -> bool:
    """A new structure and/or model (the charge in ``atoms.info["charge"]``); on failure the page
    keeps what it had and says why. ``note`` goes into the status (why this model was taken)."""
    if ENSEMBLES[ensemble.value] == "npt" and not periodic(atoms):
        ensemble.value = "Langevin"  # a free molecule has no pressure to hold
        note = " ".join(part for part in (note, "NPT needs a periodic structure: Langevin instead.") if part)
    try:
        potential = get_model(model_key)
        # SO3LR's convention, atoms.info["charge"] (and "multiplicity"): a model without these inputs refuses them
        total, multiplicity = charge_and_multiplicity(atoms)
        potential.charge_inputs(total, multiplicity)
        page.session.load(atoms, potential, md_config())
    except (StructureError, ValueError, FileNotFoundError, KeyError) as error:
        show_error(f"Cannot use this structure with this model: {error}")
        return False
    clear_error()
    page.title, page.playback, page.speed, page.shown = title, [], None, None
    cell_plots.visible = periodic(atoms)
    show_charge(total)
    viewer.set_structure(atoms, title=title)
    replot()
    update_scrubber()
    charged = f", charge {total:+d}" if total else ""
    status.object = " ".join(part for part in (
        f"**{title}** ({len(atoms)} atoms{charged}) runs with **{MODEL_LABELS.get(model_key, model_key)}**.",
        note, domain_text(model_key, atoms), "Press **Run**.") if part)
    return True


def show_charge(value: int) -> None:
    """The charge field shows the loaded structure's charge (without loading it again)."""
    page.switching = True
    try:
        charge.value = value
    finally:
        page.switching = False


@one_page_update
def on_molecule(event) -> None:
    if page.switching:
        return
    if event.new in page.uploads:  # an upload picked again: with the model chosen now
        atoms, title = page.uploads[event.new]
        load(atoms.copy(), title, model.value)
        return
    entry = MOLECULES[event.new]
    atoms = entry.atoms()
    page.switching = True  # the model follows the molecule: one load, not two
    try:
        chunk.value = default_chunk(len(atoms))
        model.value = entry.default_model
    finally:
        page.switching = False
    load(atoms, entry.label, entry.default_model)


@one_page_update
def on_model(event) -> None:
    if page.switching:
        return
    if not load(page.session.atoms, page.title, event.new):
        page.switching = True
        try:
            model.value = event.old
        finally:
            page.switching = False


@one_page_update
def on_charge(event) -> None:
    if page.switching:
        return
    atoms = page.session.atoms.copy()
    atoms.info["charge"] = int(event.new)
    if not load(atoms, page.title, model.value):
        show_charge(event.old)


def upload_model(atoms) -> tuple[str, str]:
    """The model an upload runs with (SO3LR where its elements reach), and a note saying why it is
    another one. StructureError, naming the elements, when no model here knows them."""
    if catalog.SO3LR in MODEL_LABELS:
        missing = catalog.unknown_elements(catalog.SO3LR, atoms.numbers)
        if not missing:
            return catalog.SO3LR, ""
        lacks = f"SO3LR does not know {', '.join(missing)} (it knows {catalog.element_list(catalog.SO3LR)})"
    else:
        lacks = "SO3LR is not installed (data/models/so3lr)"
    if model.value.startswith("dir:"):  # the checkpoint folder chosen now may know them
        try:
            get_model(model.value).check_elements(atoms.numbers)
            return model.value, f"{lacks}: the chosen checkpoint knows these elements."
        except StructureError:
            pass
    fallback = catalog.model_for_elements(atoms.numbers)
    if fallback is None:
        raise StructureError(f"{lacks}, and no other model here knows them either")
    return fallback, f"{lacks}: the {catalog.model_name(fallback)} knows these elements."


@one_page_update
def on_upload(event) -> None:
    if not event.new:
        return
    name, content = list(event.new.items())[-1]  # the newest file (a replaced one may linger)
    if isinstance(content, str):
        content = content.encode("utf-8")
    if (name, content) == page.last_upload:  # the dropper removing a file re-sends the rest
        return
    page.last_upload = (name, content)
    try:
        atoms = read_structure(name, content, max_bytes=MAX_BYTES, max_atoms=MAX_ATOMS)
    except StructureError as error:
        show_error(f"Upload rejected: {error}")
        return
    try:
        model_key, note = upload_model(atoms)
    except StructureError as error:
        show_error(f"Upload rejected: {Path(name).name}: {error}")
        return
    previous = model.value
    page.switching = True
    try:
        model.value = model_key
    finally:
        page.switching = False
    title = f"uploaded: {Path(name).name}"
    if load(atoms, title, model_key, note):
        name_in_picker(title, atoms, model_key)
    else:
        page.switching = True
        try:
            model.value = previous
        finally:
            page.switching = False


def name_in_picker(title: str, atoms, model_key: str) -> None:
    """The molecule picker names the upload and the model it runs with (and offers it again
    later), without loading twice."""
    key = f"upload:{title}"
    page.uploads[key] = (atoms.copy(), title)
    label = f"{title} · {model_name(model_key)}"
    page.switching = True
    try:
        molecule.options = {**{k: v for k, v in molecule.options.items() if v != key}, label: key}
        molecule.value = key
    finally:
        page.switching = False


def on_settings(event) -> None:
    npt = ENSEMBLES[ensemble.value] == "npt"
    if npt and not periodic(page.session.atoms):
        show_error("Constant pressure (NPT) needs a structure periodic in all three directions, such as the "
                   "water box; this one is a free molecule. Back to Langevin.")
        ensemble.value = "Langevin"  # calls this again
        return
    pressure.visible = npt
    try:
        page.session.configure(**md_config().to_dict())
    except ValueError as error:
        show_error(f"Invalid setting: {error}")


def on_paced(event) -> None:
    page.session.max_backlog = FRAMES_PER_CHUNK if event.new else None


def on_run(event) -> None:
    if page.session.finished:  # a stopped or blown-up run: start over from the structure
        on_reset(event)
    clear_error()
    page.playing = True
    page.session.run()
    status.object = running_text() if page.session.simulation is not None else "**Starting**…"
    update_buttons()


def on_pause(event) -> None:
    page.playing, page.playback = False, []  # the view stops now; the chunk in flight is recorded
    page.session.pause()
    status.object = "**Pausing** after the chunk in flight…"


def on_stop(event) -> None:
    page.playing, page.playback = False, []
    page.session.stop()
    status.object = "**Stopping** after the chunk in flight…"


def on_reset(event) -> None:
    clear_error()
    page.session.reset()
    page.playback, page.speed, page.shown = [], None, None
    viewer.set_structure(page.session.atoms, title=page.title)
    replot()
    update_scrubber()
    status.object = "**Reset** to the starting structure with fresh velocities. Press **Run**."


def on_relax(event) -> None:
    clear_error()
    try:
        page.session.relax()
    except RuntimeError as error:
        show_error(str(error))
        return
    status.object = "**Relaxing** (FIRE, float64, until max |F| < 0.05 eV/Å)…"


def on_quench(event) -> None:
    """The recorded frames, relaxed into the Explore tab's store (on its worker thread)."""
    history = page.session.history
    if not len(history):
        return
    clear_error()
    try:
        status.object = explore.quench(list(history.positions), history.column("potential_energy"))
    except (RuntimeError, ValueError) as error:
        show_error(f"Cannot quench: {error}")


def on_units(event) -> None:
    replot()


def on_scrub(event) -> None:
    history = page.session.history
    if page.session.running or not 0 <= event.new < len(history):
        return
    viewer.update_positions(history.positions[event.new], frame=event.new)
    show_uncertainty(history.uncertainty[event.new])
    scrubber.name = f"Recorded frame (step {int(history.columns['step'][event.new]):,})"


def trajectory_file() -> io.BytesIO:
    return io.BytesIO(page.session.history_extxyz().encode())


def energy_file() -> io.BytesIO:
    return io.BytesIO(page.session.history_csv().encode())


molecule.param.watch(on_molecule, "value")
model.param.watch(on_model, "value")
charge.param.watch(on_charge, "value")
upload.param.watch(on_upload, "value")
for widget in (ensemble, temperature, timestep, friction, pressure, chunk):
    widget.param.watch(on_settings, "value")
run_button.on_click(on_run)
pause_button.on_click(on_pause)
stop_button.on_click(on_stop)
reset_button.on_click(on_reset)
relax_button.on_click(on_relax)
quench_button.on_click(on_quench)
units.param.watch(on_units, "value")
paced.param.watch(on_paced, "value")
scrubber.param.watch(on_scrub, "value")

downloads = pn.Row(
    pn.widgets.FileDownload(callback=trajectory_file, filename="trajectory.extxyz", label="Trajectory (extxyz)",
                            button_type="light"),
    pn.widgets.FileDownload(callback=energy_file, filename="energies.csv", label="Energies (CSV)",
                            button_type="light"),
)
controls = pn.Column(
    molecule, pn.pane.Markdown(f"…or upload .xyz / .extxyz / .pdb (up to {MAX_BYTES // 1_000_000} MB, "
                               f"{MAX_ATOMS} atoms):", margin=(0, 10)),
    upload, model, charge, pn.pane.Markdown("**Ensemble**", margin=(0, 10)), ensemble, temperature, timestep, friction,
    pressure, chunk, paced, pn.Row(run_button, pause_button, stop_button), pn.Row(reset_button, relax_button), quench_button,
    pn.pane.Markdown("**Energy unit**", margin=(0, 10)), units, pn.pane.Markdown("**Downloads**", margin=(0, 10)),
    downloads, width=330,
)
main = pn.Column(
    status, alert,
    pn.Row(pn.Column(viewer, scrubber, sizing_mode="stretch_width"),
           pn.Column(energy_view, temperature_view, cell_plots, sizing_mode="stretch_width"),
           sizing_mode="stretch_width"),
    sizing_mode="stretch_width",
)
callback = pn.state.add_periodic_callback(tick, period=TICK_MS)


def cleanup(session_context, callback=callback, session=page.session, explore=explore,
            model_checks=model_checks, improver=improver) -> None:
    # default arguments: Bokeh empties this module's namespace before a session is destroyed
    callback.stop()
    session.halt(timeout=0)
    explore.close()  # stops the exploration; its temporary directory goes once the walkers let go
    model_checks.close()
    improver.close()


pn.state.on_session_destroyed(cleanup)
replot()
# dynamic: a tab's widgets are in the page only while it is shown (MD is not paced on a hidden viewer)
tabs = pn.Tabs(("MD", pn.Row(controls, main, sizing_mode="stretch_width")), ("Explore", explore.layout),
               ("Model", pn.Column(model_checks.layout, improver.layout, sizing_mode="stretch_width")), dynamic=True, sizing_mode="stretch_width")
pn.Column(
    pn.pane.Markdown("# so3krates · live molecular dynamics and minima exploration", margin=(0, 10)),
    tabs,
    sizing_mode="stretch_width",
).servable(title="so3krates")
