"""The dashboard's Model tab: can this model be trusted at the frame the MD tab shows?

Layout and callbacks only (built once per browser session by ``main.py``); the checks are
:mod:`so3krates.checks`:

1. **AD forces against finite differences**: the model's forces (automatic differentiation)
   against central differences of its energy, in float64, on the components of the atoms with the
   largest forces; the largest deviation in eV/Å.
2. **Rotation and translation**: the energy's change (float64, eV) when the frame is rotated by a
   random rotation and shifted by a random vector (a periodic cell rotates with it).
3. **NVE drift**: a short NVE run (``NVE_STEPS`` steps at the MD tab's timestep, float32 as MD
   runs) from the frame, with the frame's momenta (a Maxwell-Boltzmann draw at the MD tab's
   temperature for the starting structure); the slope of the total energy, eV/atom/ps.
4. **Committee uncertainty**: a committee's per-atom force uncertainty (max and mean, eV/Å, and
   the most uncertain atoms); "not a committee" for a single model.

"Run checks" runs them on a worker thread (the page stays responsive and shows "Checking…");
the tab's periodic callback picks up the verdicts. Compile once: the float64 calculators are kept
per model and the NVE run has fixed settings, so checks at the same frame compile nothing the
second time (the status says how many programs a run compiled).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

import panel as pn

from so3krates.checks import NVE_STEPS, Frame, ModelChecks, Report, Verdict

TICK_MS = 250
LEVELS = {"pass": ("PASS", "#1a7f37"), "warn": ("WARN", "#b35900"), "info": ("n/a", "#57606a"),
          "error": ("ERROR", "#cf222e")}


def verdicts_markdown(verdicts: list[Verdict]) -> str:
    rows = ["| Check | Verdict | Result |", "|---|---|---|"]
    for verdict in verdicts:
        word, colour = LEVELS[verdict.level]
        text = verdict.text.replace("|", "&#124;")  # a bar in a cell (|ΔE|) would split it
        rows.append(f"| {verdict.check} | <b style=\"color:{colour}\">{word}</b> | {text} |")
    return "\n".join(rows)


class ModelTab:
    """The widgets and callbacks of one page's Model tab.

    ``frame()`` returns the MD tab's current :class:`Frame` (called on the UI thread, which owns
    the MD history); the checks run on a worker thread, one run at a time.
    """

    def __init__(self, frame: Callable[[], Frame]):
        self.frame = frame
        self.checks = ModelChecks()
        self.results: collections.deque = collections.deque()  # (generation, Report | Exception) from the worker
        self.worker: threading.Thread | None = None
        self.generation = 0
        self.runs = 0

        self.run_button = pn.widgets.Button(name="Run checks", button_type="primary", width=120)
        self.status = pn.pane.Markdown("Press **Run checks** to test the model at the frame the MD tab shows.",
                                       css_classes=["so3k-model-status"], margin=(0, 10))
        self.table = pn.pane.Markdown("", css_classes=["so3k-model-checks"], margin=(0, 10),
                                      sizing_mode="stretch_width")
        self.run_button.on_click(self.on_run)
        self.layout = self._layout()
        self.callback = pn.state.add_periodic_callback(self.tick, period=TICK_MS)

    def _layout(self) -> pn.Row:
        controls = pn.Column(
            self.run_button,
            pn.pane.Markdown(
                "The checks use the molecule, model, timestep and temperature of the MD tab, at the frame its "
                f"viewer shows (the last recorded frame, or the starting structure): AD forces against central "
                f"finite differences (float64), the energy under a random rotation and translation (float64), "
                f"the total-energy drift of a {NVE_STEPS}-step NVE run, and a committee's per-atom force "
                "uncertainty.", margin=(0, 10), styles={"font-size": "0.85em"}),
            width=330,
        )
        return pn.Row(controls, pn.Column(self.status, self.table, sizing_mode="stretch_width"),
                      sizing_mode="stretch_width")

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def on_run(self, event) -> None:
        if self.busy:
            return
        frame = self.frame()
        self.generation += 1
        self.run_button.disabled = True
        self.status.object = (f"**Checking…** {frame.title} ({len(frame.atoms)} atoms) with {frame.model_label} at "
                              f"{frame.where}")
        self.worker = threading.Thread(target=self._work, args=(self.generation, frame), daemon=True,
                                       name="so3krates-model-checks")
        self.worker.start()

    def _work(self, generation: int, frame: Frame) -> None:
        try:
            outcome = self.checks.run(frame)
        except Exception as error:  # shown on the page; the tab stays usable
            outcome = error
        self.results.append((generation, outcome))

    def tick(self) -> None:
        while self.results:
            generation, outcome = self.results.popleft()
            self.worker = None
            self.run_button.disabled = False
            if generation != self.generation:
                continue
            if isinstance(outcome, Exception):
                self.status.object = f"**The checks failed**: {type(outcome).__name__}: {outcome}"
                continue
            self.show(outcome)

    def show(self, report: Report) -> None:
        self.runs += 1
        frame = report.frame
        warned = sum(v.level in ("warn", "error") for v in report.verdicts)
        summary = "all passed" if not warned else f"{warned} to look at"
        compiled = (f"compiled {report.compiled} new program{'s' if report.compiled != 1 else ''} (a first run "
                    "compiles; checks at the same frame reuse them)" if report.compiled
                    else "no new programs compiled")
        # the table first: the status's "Checked" is what a reader (or a test) takes for "done"
        self.table.object = verdicts_markdown(report.verdicts)
        self.status.object = (f"**Checked** {frame.title} with {frame.model_label} at {frame.where} "
                              f"in {report.seconds:.1f} s: {summary} · run {self.runs} · {compiled}")

    def close(self) -> None:
        self.callback.stop()
        self.generation += 1  # a run in flight finishes on its own; its result is dropped
