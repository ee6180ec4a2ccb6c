"""The Model tab's "Improve model": refinement rounds on the molecule in view, live.

Layout and callbacks only; the rounds are :func:`so3krates.explore.refine.refine` (explore,
validate against xTB, label where the model is wrong or unsure, fine-tune), run on a worker
thread into this page's temporary directory, with small settings that fit a lecture: one walker,
a few hops, the three lowest minima, a few hundred fine-tuning steps. The tab's periodic callback
shows each stage as it starts and redraws the rounds' plot after each round. When the rounds are
done, the improved model joins the model picker for this page (``on_improved(label, key)``) and
can be downloaded as a checkpoint (a zip of its directory). Closing the page stops the rounds at
the next item and removes the directory.
"""

from __future__ import annotations

import collections
import io
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ase
import panel as pn

from so3krates.explore.refine import RefineConfig, RefineStopped, refine

TICK_MS = 250
STAGES = {"explore": "exploring", "validate": "checking minima against xTB", "label": "labelling with xTB",
          "fine-tune": "fine-tuning"}


@dataclass(frozen=True)
class Subject:
    """What to improve: the molecule in view, and the checkpoint directory of its model (None, with
    ``why``, for a model that cannot be refined here)."""

    atoms: ase.Atoms
    title: str
    model_label: str
    model_dir: Path | None
    why: str = ""


def dashboard_config(rounds: int, hops: int) -> RefineConfig:
    return RefineConfig(rounds=rounds, walkers=1, hops=hops, scheduler="threads", lowest=3, steps=300,
                        valid_every=100, learning_rate=1e-3, batch_size=4, final_check=False)


class ModelImprover:
    def __init__(self, subject: Callable[[], Subject], on_improved: Callable[[str, Path], None]):
        self.subject, self.on_improved = subject, on_improved
        self.directory = Path(tempfile.mkdtemp(prefix="so3krates-refine-"))
        self.events: collections.deque = collections.deque()  # (generation, stage, details) from the worker
        self.stop = threading.Event()
        self.worker: threading.Thread | None = None
        self.generation = 0
        self.improved: Path | None = None
        self.trail: list[str] = []  # the stages of the round in progress, as they started

        self.button = pn.widgets.Button(name="Improve model", button_type="success", width=140)
        self.rounds = pn.widgets.IntInput(name="Rounds", value=1, start=1, end=5, width=90)
        self.hops = pn.widgets.IntInput(name="Hops per round", value=4, start=2, end=50, width=110)
        self.status = pn.pane.Markdown(
            "**Improve model** explores the molecule with its model, checks the lowest minima against xTB, "
            "labels with xTB where the model is wrong or unsure, and fine-tunes it: a new model for this page.",
            css_classes=["so3k-improve-status"], margin=(0, 10))
        self.plot = pn.pane.PNG(None, width=720, css_classes=["so3k-improve-plot"], visible=False)
        self.download = pn.widgets.FileDownload(callback=self._zip, filename="refined-model.zip", label="Download the "
                                                "improved model (checkpoint)", visible=False, button_type="primary",
                                                width=300)
        self.button.on_click(self.on_improve)
        self.layout = pn.Column(pn.pane.Markdown("### Improve model", margin=(10, 10, 0, 10)),
                                pn.Row(self.button, self.rounds, self.hops), self.status, self.plot, self.download,
                                sizing_mode="stretch_width")
        self.callback = pn.state.add_periodic_callback(self.tick, period=TICK_MS)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def on_improve(self, event) -> None:
        if self.busy:
            return
        subject = self.subject()
        if subject.model_dir is None:
            self.status.object = f"**Cannot improve {subject.model_label}**: {subject.why}"
            return
        self.generation += 1
        out = self.directory / f"run{self.generation}"
        self.button.disabled = True
        self.status.object = f"**Improving** {subject.model_label} on {subject.title}: starting…"
        self.worker = threading.Thread(target=self._work, args=(self.generation, subject, out, int(self.rounds.value),
                                                                int(self.hops.value)),
                                       daemon=True, name="so3krates-improve")
        self.worker.start()

    def _work(self, generation: int, subject: Subject, out: Path, rounds: int, hops: int) -> None:
        def on_event(stage: str, details: dict) -> None:
            self.events.append((generation, stage, details))

        try:
            reports = refine(subject.model_dir, subject.atoms, out, dashboard_config(rounds, hops), on_event=on_event,
                             stop=self.stop)
            self.events.append((generation, "done", {"reports": reports, "out": out, "subject": subject}))
        except RefineStopped:
            self.events.append((generation, "stopped", {}))
        except Exception as error:  # shown on the page; the tab stays usable
            self.events.append((generation, "failed", {"error": f"{type(error).__name__}: {error}"}))
        finally:
            if self.stop.is_set():  # the page closed while the rounds ran: their directory goes with them
                shutil.rmtree(self.directory, ignore_errors=True)

    def tick(self) -> None:
        while self.events:
            generation, stage, details = self.events.popleft()
            if generation != self.generation:
                continue
            if stage in STAGES:  # the round's stages so far (several may start between two ticks)
                self.trail = [] if stage == "explore" else self.trail
                self.trail.append(STAGES[stage])
                self.status.object = f"**Improving…** round {details['round']}: {' → '.join(self.trail)}"
            elif stage == "round":
                self._show_round(details)
            else:
                self.worker = None
                self.button.disabled = False
                self._finish(stage, details)

    def _show_round(self, report: dict) -> None:
        out = self.directory / f"run{self.generation}"
        if (out / "rounds.png").is_file():
            self.plot.object = (out / "rounds.png").read_bytes()
            self.plot.visible = True
        before, after = report["new_error_before"], report["new_error_after"]
        errors = "" if not before else (f"; force MAE on the new labels {before['forces_mae']:.3f} → "
                                        f"{after['forces_mae']:.3f} eV/Å")
        self.status.object = (f"**Round {report['round']} done**: {report['confirmed']} of {report['validated']} "
                              f"minima confirmed by xTB, {sum(report['labels_added'].values())} labels added{errors}")

    def _finish(self, stage: str, details: dict) -> None:
        if stage == "failed":
            self.status.object = f"**Improving failed**: {details['error']}"
            return
        if stage == "stopped":
            self.status.object = "**Stopped.**"
            return
        reports, out, subject = details["reports"], details["out"], details["subject"]
        last = reports[-1]
        if not (out / "model").is_dir():
            self.status.object = (f"**{subject.model_label} already meets the targets** on {subject.title}: "
                                  f"{last.confirmed} of {last.validated} minima confirmed by xTB; nothing to improve.")
            return
        self.improved = out / "model"
        label = f"{subject.model_label}, improved on {subject.title} (run {self.generation})"
        self.on_improved(label, self.improved)
        self.download.filename = f"{Path(subject.model_dir).name}-refined.zip"
        self.download.visible = True
        rounds = sum(r.next_model is not None for r in reports)
        self.status.object = (f"**Improved** in {rounds} round{'s' if rounds != 1 else ''}: "
                              f"**{label}** is in the model picker (MD tab), and can be downloaded below. "
                              f"Last round: {last.confirmed} of {last.validated} minima confirmed by xTB.")

    def _zip(self) -> io.BytesIO:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(self.improved.rglob("*")) if self.improved else []:
                if path.is_file():
                    archive.write(path, Path("refined-model") / path.relative_to(self.improved))
        buffer.seek(0)
        return buffer

    def close(self) -> None:
        """Stop the rounds at their next item (without waiting here: this runs on the server's event
        loop); the directory is removed now, or by the worker as it ends."""
        self.callback.stop()
        self.stop.set()
        if self.worker is None:
            shutil.rmtree(self.directory, ignore_errors=True)
