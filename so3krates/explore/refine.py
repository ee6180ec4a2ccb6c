"""Refinement: explore with the model, find where it is wrong or unsure, label there, fine-tune, repeat.

One round (``so3krates refine MODEL STRUCTURE --out DIR --rounds N``, :func:`refine`):

1. **explore** with the round's model: minima-hopping walkers on the exploration's scheduler
   (:mod:`~so3krates.explore.campaign`);
2. **validate** the ``lowest`` minima against xTB (:mod:`~so3krates.explore.validate`), keeping
   every xTB relaxation's steps: they are labelled frames where the model's minimum is not xTB's;
3. **stop** when at least ``confirm_fraction`` of them are confirmed, the sampled uncertainty
   (the ``uncertainty_quantile`` of the escapes' largest per-atom force uncertainty, a
   committee's) is below ``uncertainty_threshold``, and, with ``displaced`` copies (labelled
   first, in every round), the model's force MAE on them is at most ``displaced_threshold``: a
   single model has no uncertainty, and its minima may be xTB's while it is far off around them;
4. **select** what to label: the minima new relative to the training data, the escape frames
   whose uncertainty exceeds the threshold (most uncertain first), and frames along the xTB
   relaxation path of every minimum xTB moved (those come labelled), and ``displaced`` copies of
   each validated minimum with every atom moved at random (``displacement`` Å, Gaussian per
   Cartesian component): the distortions minima hopping's relaxations pass through, where a model
   trained on MD frames is least accurate;
5. **label** the selection with xTB on the same scheduler as the walkers;
6. **fine-tune** from the round's parameters on the old training frames (the model's own train
   and validation frames: its test frames stay held out) and every label so far, each label
   counted ``label_weight`` times per epoch, for a fixed number of steps
   (:func:`so3krates.train.train` with ``initial=``);
7. **report**: labels added, confirmed fraction, the errors on the new labels before and after
   fine-tuning (and on the displaced minima alone: the model's error where the explorer sends
   it, on minima it had not seen), CPU time; ``rounds.csv`` and ``rounds.png`` show all rounds.

After the last fine-tuning, one more exploration and validation checks the final model
(``final_check``; it labels its displaced minima too, to measure, not to train). Output directory::

    refine.json                      what is refined with which settings (a rerun must match: it resumes)
    roundK/explore/                  the round's exploration
    roundK/validation/<id>.json      each validated minimum (+ <id>.path.npz, its xTB relaxation)
    roundK/validation.json           the round's validation report
    roundK/selection.json            what the round labels, and why
    roundK/labels/<k>.extxyz         each selected structure with its xTB labels (one file each)
    roundK/train/                    the fine-tuning run; train/best is the round's model
    roundK/report.json               the round's report
    model/                           the latest model (a checkpoint, with its starting model's split.npz:
                                     the test frames it never saw), report.json, rounds.csv, rounds.png

Every stage writes its results atomically, one file per item, and is skipped when they are
there: killed at any point, the same command resumes without losing or repeating labelled work
(the exploration resumes its walkers; the fine-tuning resumes its saved state, deterministically).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ase
import numpy as np

from so3krates.checkpoint import load_model, save_model
from so3krates.data import Dataset, concatenate, read
from so3krates.data.generate import MAX_LABELLING_ACCURACY
from so3krates.data.labelled_xyz import format_frame
from so3krates.evaluation import evaluate_model, select_frames
from so3krates.explore.campaign import Exploration, ExplorationConfig, read_hops
from so3krates.explore.hopping import HoppingConfig
from so3krates.explore.store import MatchTolerances, MinimaStore
from so3krates.explore.validate import (
    MinimumValidation, TrainingIndex, ValidationConfig, XTBPath, ivalidate_minima, report_of,
)
from so3krates.files import atomic_write
from so3krates.reference import ReferenceError, XTBReference

__all__ = ["RefineConfig", "RoundReport", "RefineStopped", "refine", "read_reports"]

FORMAT = "so3krates-refine/1"
REFINE_LABELS = "refine_labels.extxyz"  # beside a refined model: the labels it trained on beyond its data
LABEL_DECIMALS = 8


class RefineStopped(Exception):
    """``refine(..., stop=event)`` ended early because the event was set; what was done is kept."""


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """How a refinement runs; see the module docstring for the stages.

    rounds: most fine-tunings. walkers, hops: the exploration of each round (hops per walker).
    scheduler: where walkers, xTB validations and labels run: "threads", "local" (a Dask
        LocalCluster on 127.0.0.1) or a Dask scheduler address.
    lowest: minima validated per round (lowest energy first); confirm_fraction of them must stay
        minima of xTB to stop.
    uncertainty_threshold: eV/Å, a committee's largest per-atom force uncertainty above which an
        escape frame is labelled; uncertainty_quantile of the round's escapes must be below it to stop.
    max_minima_labels, max_uncertain_labels: most new minima and uncertain escape frames labelled per
        round. path_frames: frames taken along each moved minimum's xTB relaxation (evenly, both
        ends included).
    displaced: randomly displaced copies labelled per validated minimum (0: none); displacement: Å,
        the standard deviation of each Cartesian component of the displacement (ASE's ``rattle``).
    displaced_threshold: eV/Å; with displaced copies, the round's model must have a force MAE on them
        at or below this to stop. It is the measured counterpart of a committee's uncertainty, and
        the only one a single model has: without it, a model whose minima xTB confirms stops there
        even if it is far off a tenth of an ångström away, where the next hop's relaxation starts.
    steps, learning_rate, batch_size, valid_every, valid_fraction: the fine-tuning of each round
        (Adam from the round's parameters; a fixed budget, so the rounds cost alike).
    lr_decay: the rate's factor over a round's steps (exponentially; 1: constant). Ending low
        keeps the accuracy on the old frames: Adam's noise at a constant rate costs some.
    grad_clip: clip each fine-tuning step's global gradient norm to this (None: no clipping), as
        ``so3krates train --grad-clip``: a guard for a large model whose first steps on new labels
        are steep.
    energy_weight: the loss's weight on the per-atom energy MSE (the force term's is 1). Minima
        hopping ranks minima by energy and finds where the model overbinds: a conformational error
        of 0.1 eV in a 42-atom molecule is 6e-6 eV² per atom, invisible to the loss at weight 1.
    label_weight: how many times each xTB label of the refinement is in the fine-tuning's training
        frames (the validation frames are drawn first, so a label and its copies are on one side):
        a few dozen labels among a thousand old frames otherwise hardly move the model.
    final_check: explore and validate once more after the last fine-tuning.
    """

    rounds: int = 3
    walkers: int = 2
    hops: int = 25
    scheduler: str = "local"
    hopping: HoppingConfig = HoppingConfig()
    tolerances: MatchTolerances = MatchTolerances()
    validation: ValidationConfig = ValidationConfig()
    lowest: int = 10
    confirm_fraction: float = 0.9
    uncertainty_threshold: float = 0.1
    uncertainty_quantile: float = 0.9
    max_minima_labels: int = 20
    max_uncertain_labels: int = 40
    path_frames: int = 6
    displaced: int = 0
    displacement: float = 0.1
    displaced_threshold: float = 0.2
    steps: int = 2000
    learning_rate: float = 2e-4
    lr_decay: float = 1.0
    grad_clip: float | None = None
    energy_weight: float = 1.0
    batch_size: int = 4
    valid_every: int = 500
    valid_fraction: float = 0.1
    label_weight: int = 1
    seed: int = 0
    final_check: bool = True

    def __post_init__(self):
        problems = []
        for name in ("rounds", "walkers", "hops", "lowest", "path_frames", "steps", "batch_size", "valid_every",
                     "label_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_minima_labels", "max_uncertain_labels", "displaced"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("confirm_fraction", "uncertainty_quantile", "valid_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                problems.append(f"{name} must be in (0, 1], got {value!r}")
        if isinstance(self.lr_decay, bool) or not isinstance(self.lr_decay, (int, float)) or not 0 < self.lr_decay <= 1:
            problems.append(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        for name in ("uncertainty_threshold", "learning_rate", "displacement", "energy_weight", "displaced_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                problems.append(f"{name} must be positive, got {value!r}")
        if self.grad_clip is not None and (isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, (int, float))
                                           or not self.grad_clip > 0):
            problems.append(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        if not isinstance(self.scheduler, str) or not self.scheduler:
            problems.append("scheduler must be 'threads', 'local' or a Dask scheduler address")
        if problems:
            raise ValueError("invalid RefineConfig: " + "; ".join(problems))

    def identity(self) -> dict[str, Any]:
        """What makes two refinements the same (the number of rounds and the scheduler may change
        between a run and its resumption)."""
        values = dataclasses.asdict(self)
        for name in ("rounds", "scheduler", "final_check"):
            values.pop(name)
        if values["grad_clip"] is None:  # as refinements recorded before the option existed
            values.pop("grad_clip")
        return values


@dataclasses.dataclass(frozen=True)
class RoundReport:
    round: int
    model: str  # the checkpoint the round explored with
    hops: int
    minima: int  # distinct minima found
    validated: int
    confirmed: int
    fraction_confirmed: float | None
    relative_energy_mae: float | None  # eV, confirmed minima, model vs xTB
    sampled_uncertainty: float | None  # eV/Å, the quantile of the escapes' largest uncertainty; None: single model
    converged: bool  # this round's model met both targets: nothing was labelled
    labels_added: dict[str, int]  # per kind: minimum, uncertain, path, displaced
    new_error_before: dict[str, float] | None  # force/energy MAE on the round's labels, model before...
    new_error_after: dict[str, float] | None  # ... and after fine-tuning
    valid_forces_mae: float | None  # the fine-tuned model's validation force MAE (eV/Å)
    cpu_seconds: dict[str, float]  # per stage, this process's CPU time (workers elsewhere not counted)
    next_model: str | None  # the fine-tuned checkpoint, relative to the output directory (None when converged
    # or a final check)
    displaced_error: dict[str, float] | None = None  # force/energy MAE of the round's model on its displaced
    # minima (structures it had not seen: labelled before it is fine-tuned on them)
    relative_energy_max: float | None = None  # eV, the largest relative-energy error of a confirmed minimum

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- the driver ---------------------------------------------------------------------------------

def refine(model_dir: str | os.PathLike, atoms: ase.Atoms, out_dir: str | os.PathLike,
           config: RefineConfig | None = None, *, data: str | os.PathLike | None = None,
           on_event: Callable[[str, dict[str, Any]], None] | None = None,
           stop: threading.Event | None = None) -> list[RoundReport]:
    """Refine the checkpoint ``model_dir`` on the molecule ``atoms`` into ``out_dir`` (see the module
    docstring); returns every round's report, the resumed ones included. ``data``: the model's
    training data (default: the file its provenance names). ``on_event(stage, details)`` hears of
    every stage as it starts and of each round's report (stage "round"). Setting ``stop`` ends the
    refinement at the next item (a hop, a minimum, a label, a validation of the fine-tuning) with
    :class:`RefineStopped`; running it again resumes."""
    config = RefineConfig() if config is None else config
    out = Path(out_dir)
    stop = stop or threading.Event()

    def notify(stage: str, details: dict[str, Any]) -> None:
        if stop.is_set():
            raise RefineStopped(f"refinement stopped before {stage} of round {details.get('round')}")
        if on_event is not None:
            on_event(stage, details)

    start_model = Path(model_dir)
    potential = load_model(start_model)
    potential.check_elements(atoms.numbers)  # an element the model does not know: a clear error now
    potential.charge_inputs(int(atoms.info.get("charge", 0)), int(atoms.info.get("multiplicity", 1)))
    old_data, data_note = _old_training_data(start_model, data)
    # labels as tight as the training data's (`so3krates label`): the same SCF accuracy
    reference = XTBReference(charge=int(atoms.info.get("charge", 0)), multiplicity=int(atoms.info.get("multiplicity", 1)),
                             accuracy=MAX_LABELLING_ACCURACY)
    _check_or_write_record(out, start_model, atoms, config, old_data, potential)
    reports: list[RoundReport] = []
    current = start_model
    last = config.rounds + (1 if config.final_check else 0)
    for number in range(1, last + 1):
        check_only = number > config.rounds
        report = _round(number, current, atoms, out / f"round{number}", config, reference, old_data, out, check_only,
                        notify, stop)
        reports.append(report)
        _write_summary(out, reports, data_note)
        notify("round", report.to_dict())
        if report.next_model is None:
            break
        current = out / report.next_model
    return reports


def read_reports(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The round reports written so far, in order."""
    out = Path(out_dir)
    found = []
    for number in range(1, 10_000):
        path = out / f"round{number}" / "report.json"
        if not path.is_file():
            break
        found.append(json.loads(path.read_text()))
    return found


def _round(number: int, model_dir: Path, atoms: ase.Atoms, where: Path, config: RefineConfig,
           reference: XTBReference, old_data: Dataset, out: Path, check_only: bool,
           notify: Callable[[str, dict[str, Any]], None], stop: threading.Event) -> RoundReport:
    report_path = where / "report.json"
    if report_path.is_file():
        stored = RoundReport(**json.loads(report_path.read_text()))
        if stored.next_model is not None or stored.converged or check_only:
            return stored
        # the final check of a shorter run, now a full round (more --rounds): its exploration and
        # validation are kept, the rest follows
    where.mkdir(parents=True, exist_ok=True)
    cpu: dict[str, float] = {}
    model = load_model(model_dir)
    labelled_so_far = _labels_before(out, number)

    with _cpu(cpu, "explore"):
        notify("explore", {"round": number})
        exploration = _explore(model, atoms, where / "explore", config, number, stop)
    hops = read_hops(where / "explore")
    minima = exploration.store.minima()
    lowest = sorted(minima, key=lambda m: (m.energy, m.id))[:config.lowest]
    earlier = () if labelled_so_far is None else labelled_so_far.positions
    training = TrainingIndex(atoms.numbers, [*old_data.positions, *earlier])

    with _cpu(cpu, "validate"):
        notify("validate", {"round": number, "minima": len(lowest)})
        rows = _validate(lowest, atoms, where / "validation", config, reference, training, stop)
    validation = report_of([row for row, _ in rows], config.validation, True)
    validation.write(where / "validation.json")
    summary = validation.summary
    sampled = _sampled_uncertainty(hops, config.uncertainty_quantile)
    with _cpu(cpu, "label"):  # the displaced minima in every round: they measure the model where the explorer went
        displaced = _displaced(where, lowest, atoms, config, number)
        if displaced:
            notify("label", {"round": number, "structures": len(displaced), "what": "displaced minima"})
        displaced_labels = _label(displaced, atoms, where / "displaced", reference, config.scheduler, stop)
    with _cpu(cpu, "evaluate"):
        displaced_error = None if displaced_labels is None else _errors(model, displaced_labels)
    converged = has_converged(config, summary["fraction_confirmed"], sampled, displaced_error)
    report = dict(round=number, model=str(model_dir), hops=len(hops), minima=len(minima), validated=summary["count"],
                  confirmed=summary["confirmed"], fraction_confirmed=summary["fraction_confirmed"],
                  relative_energy_mae=summary["relative_energy_mae"],
                  relative_energy_max=summary["relative_energy_max"], sampled_uncertainty=sampled,
                  converged=converged, labels_added={}, new_error_before=None, new_error_after=None,
                  valid_forces_mae=None, cpu_seconds=cpu, next_model=None, displaced_error=displaced_error)
    training_round = not (converged or check_only)
    with _cpu(cpu, "label"):
        selection = _select(where / "selection.json", minima, hops, rows, atoms, training, config) if training_round else []
        if selection:
            notify("label", {"round": number, "structures": len(selection), "what": "selected structures"})
        new = _label(selection, atoms, where / "labels", reference, config.scheduler, stop)
    if not training_round:
        atomic_write(report_path, json.dumps(report, indent=1).encode())
        return RoundReport(**report)
    new = _joined([new, displaced_labels])
    if new is None:
        raise RuntimeError(f"{where.name}: nothing to label (no new minimum, no uncertain escape, no xTB relaxation "
                           "path, no displaced minima: see its validation.json)")
    labelled = [item["kind"] for k, item in enumerate(selection) if (where / "labels" / f"{k}.extxyz").is_file()]
    report["labels_added"] = {kind: labelled.count(kind) for kind in ("minimum", "uncertain", "path")}
    report["labels_added"]["displaced"] = 0 if displaced_labels is None else len(displaced_labels)
    with _cpu(cpu, "fine-tune"):
        labels = _joined([labelled_so_far, new])
        notify("fine-tune", {"round": number, "frames": len(old_data) + len(labels)})
        result = _fine_tune(model, old_data, labels, where / "train", config, number, stop)
    next_model = load_model(where / "train" / "best")
    with _cpu(cpu, "evaluate"):
        report["new_error_before"] = _errors(model, new)
        report["new_error_after"] = _errors(next_model, new)
    report["valid_forces_mae"] = result.get("forces", {}).get("mae_eV_A")
    report["next_model"] = str((where / "train" / "best").relative_to(out))
    _save_refined(next_model, out, number, where / "train" / "best")
    atomic_write(report_path, json.dumps(report, indent=1).encode())
    return RoundReport(**report)


class _cpu:
    """Adds the CPU seconds of a block (this process: the driver, threads, JAX) to ``cpu[stage]``."""

    def __init__(self, cpu: dict[str, float], stage: str):
        self.cpu, self.stage = cpu, stage

    def __enter__(self):
        self.start = time.process_time()

    def __exit__(self, *exc):
        self.cpu[self.stage] = round(self.cpu.get(self.stage, 0.0) + time.process_time() - self.start, 2)


# --- the stages ---------------------------------------------------------------------------------

def _explore(model, atoms: ase.Atoms, where: Path, config: RefineConfig, number: int,
             stop: threading.Event) -> Exploration:
    hopping = dataclasses.replace(config.hopping, seed=config.hopping.seed + 1000 * number + config.seed)
    exploration = Exploration(atoms, model, where, ExplorationConfig(
        walkers=config.walkers, hops=config.hops, hopping=hopping, scheduler=config.scheduler,
        tolerances=config.tolerances), description={"refine_round": number})
    exploration.start()
    while exploration.active:
        if stop.wait(0.2):
            exploration.stop()
            raise RefineStopped(f"refinement stopped while exploring (round {number}); rerun to resume")
    progress = exploration.progress()
    if progress.state == "failed":
        raise RuntimeError(f"the exploration of round {number} failed: {progress.message}; rerun to resume")
    return exploration


def _validate(lowest, atoms: ase.Atoms, where: Path, config: RefineConfig, reference: XTBReference,
              training: TrainingIndex, stop: threading.Event) -> list[tuple[MinimumValidation, XTBPath | None]]:
    """Each minimum checked against xTB once: its row (and path) saved in its own files."""
    where.mkdir(parents=True, exist_ok=True)
    validation = dataclasses.replace(config.validation, reference=reference)
    todo = [m for m in lowest if not (where / f"{m.id}.json").is_file()]

    def save(row: MinimumValidation) -> None:
        if row.xtb_path is not None:
            _save_npz(where / f"{row.id}.path.npz", positions=row.xtb_path.positions, energies=row.xtb_path.energies,
                      forces=row.xtb_path.forces)
        atomic_write(where / f"{row.id}.json", json.dumps(row.to_dict()).encode())

    tasks = [(_validate_minimum, (m, atoms.numbers, training, validation)) for m in todo]
    for row in _run_tasks(config.scheduler, tasks, stop):
        save(row)
    rows = []
    for minimum in lowest:
        values = json.loads((where / f"{minimum.id}.json").read_text())
        values["xtb_positions"] = None if values["xtb_positions"] is None else np.asarray(values["xtb_positions"])
        path_file = where / f"{minimum.id}.path.npz"
        path = None
        if path_file.is_file():
            with np.load(path_file, allow_pickle=False) as arrays:
                path = XTBPath(arrays["positions"], arrays["energies"], arrays["forces"])
        rows.append((MinimumValidation(**values), path))
    return rows


def _validate_minimum(minimum, numbers, training, validation: ValidationConfig) -> MinimumValidation:
    return next(ivalidate_minima([minimum], numbers, training, validation, keep_path=True))


def has_converged(config: RefineConfig, fraction_confirmed: float | None, sampled_uncertainty: float | None,
                  displaced_error: dict[str, float] | None) -> bool:
    """Whether a round's model meets the targets (module docstring, stage 3): enough of its lowest
    minima confirmed, its uncertainty (a committee's) and its error on displaced minima (when
    labelled) below their thresholds."""
    return ((fraction_confirmed or 0.0) >= config.confirm_fraction
            and (sampled_uncertainty is None or sampled_uncertainty < config.uncertainty_threshold)
            and (displaced_error is None or displaced_error["forces_mae"] <= config.displaced_threshold))


def _sampled_uncertainty(hops: list[dict[str, Any]], quantile: float) -> float | None:
    values = [h["escape_uncertainty"] for h in hops if h.get("escape_uncertainty") is not None]
    return float(np.quantile(values, quantile)) if values else None


def _select(path: Path, minima, hops, rows, atoms: ase.Atoms, training: TrainingIndex,
            config: RefineConfig) -> list[dict[str, Any]]:
    """What the round labels (written once: a resumed round labels exactly the same structures)."""
    if path.is_file():
        return json.loads(path.read_text())["structures"]
    selection: list[dict[str, Any]] = []
    threshold = config.validation.new_threshold
    for minimum in sorted(minima, key=lambda m: (m.energy, m.id)):
        if sum(item["kind"] == "minimum" for item in selection) >= config.max_minima_labels:
            break
        distance = training.nearest(minimum.positions, None, True, config.validation.training_candidates)[0]
        if distance > threshold:
            selection.append({"kind": "minimum", "source": f"minimum {minimum.id}", "why": distance,
                              "positions": np.asarray(minimum.positions).tolist()})
    uncertain = sorted((h for h in hops if h.get("uncertain_frame") is not None
                        and h["escape_uncertainty"] > config.uncertainty_threshold),
                       key=lambda h: (-h["escape_uncertainty"], h["walker"], h["hop"]))
    for hop in uncertain[:config.max_uncertain_labels]:
        selection.append({"kind": "uncertain", "source": f"{hop['walker']}/{hop['hop']}",
                          "why": hop["escape_uncertainty"], "positions": hop["uncertain_frame"]})
    for row, xtb_path in rows:
        if row.status in ("moved", "not converged") and xtb_path is not None:
            steps = len(xtb_path.energies)
            for k in sorted(set(np.linspace(0, steps - 1, min(config.path_frames, steps)).round().astype(int).tolist())):
                selection.append({"kind": "path", "source": f"minimum {row.id} xtb step {k}", "why": row.rmsd,
                                  "positions": xtb_path.positions[k].tolist(), "energy": float(xtb_path.energies[k]),
                                  "forces": xtb_path.forces[k].tolist()})
    atomic_write(path, json.dumps({"format": FORMAT, "structures": selection}).encode())
    return selection


def _label(selection: list[dict[str, Any]], atoms: ase.Atoms, where: Path, reference: XTBReference,
           scheduler: str, stop: threading.Event) -> Dataset:
    """Each selected structure with its xTB energy and forces in ``where/<k>.extxyz`` (the path
    frames' labels come from the validation); a structure xTB cannot compute is left out, and
    says why in ``where/<k>.failed``. None when there is nothing to label."""
    if not selection:
        return None
    where.mkdir(parents=True, exist_ok=True)
    numbers = atoms.numbers
    todo = []
    for k, item in enumerate(selection):
        if (where / f"{k}.extxyz").is_file() or (where / f"{k}.failed").is_file():
            continue
        if "energy" in item:
            _write_label(where / f"{k}.extxyz", numbers, item, reference, item["energy"], item["forces"])
        else:
            todo.append((_label_one, (k, numbers, np.asarray(item["positions"]), reference)))
    for k, result in _run_tasks(scheduler, todo, stop):
        if isinstance(result, str):
            atomic_write(where / f"{k}.failed", result.encode())
        else:
            _write_label(where / f"{k}.extxyz", numbers, selection[k], reference, *result)
    files = [where / f"{k}.extxyz" for k in range(len(selection)) if (where / f"{k}.extxyz").is_file()]
    if not files:
        raise RuntimeError(f"{where}: xTB labelled none of the {len(selection)} selected structures")
    return concatenate([read(path) for path in files])


def _displaced(where: Path, lowest, atoms: ase.Atoms, config: RefineConfig, number: int) -> list[dict[str, Any]]:
    """``config.displaced`` randomly displaced copies of each validated minimum (written once, in
    ``where/displaced.json``; the seed is the refinement's, the round's and the minimum's)."""
    path = where / "displaced.json"
    if path.is_file():
        return json.loads(path.read_text())["structures"]
    selection = []
    for minimum in lowest:
        rng = np.random.default_rng([config.seed, number, int(minimum.id)])
        for copy in range(config.displaced):
            positions = np.asarray(minimum.positions) + rng.normal(0.0, config.displacement, (len(atoms), 3))
            selection.append({"kind": "displaced", "source": f"minimum {minimum.id} displaced {copy}",
                              "why": config.displacement, "positions": positions.tolist()})
    atomic_write(path, json.dumps({"format": FORMAT, "structures": selection}).encode())
    return selection


def _joined(datasets: list[Dataset | None]) -> Dataset | None:
    present = [d for d in datasets if d is not None]
    return concatenate(present) if present else None


def _label_one(k: int, numbers, positions, reference: XTBReference):
    try:
        result = reference.calculate(ase.Atoms(numbers=numbers, positions=positions))
    except ReferenceError as error:
        return k, str(error)
    return k, (result["energy"], result["forces"])


def _write_label(path: Path, numbers, item: dict[str, Any], reference: XTBReference, energy: float, forces) -> None:
    info = {"kind": item["kind"], "source": item["source"]}
    # a charged or open-shell structure says so (SO3LR's keys), so that fine-tuning a model with
    # charge inputs trains it at the charge xTB computed
    info.update({key: value for key, value, neutral in (("charge", reference.charge, 0),
                                                         ("multiplicity", reference.multiplicity, 1)) if value != neutral})
    text = format_frame(numbers, np.asarray(item["positions"]), energy, np.asarray(forces), info, LABEL_DECIMALS)
    atomic_write(path, text.encode("ascii"))


def _fine_tune(model, old_data: Dataset, labels: Dataset, where: Path, config: RefineConfig,
               number: int, stop: threading.Event) -> dict[str, Any]:
    """Train from ``model`` into ``where`` (resuming a killed run); returns the best validation metrics."""
    from so3krates.potential import exact_potential
    from so3krates.train import TrainConfig
    from so3krates.train.loop import STATE_FILE, iterate

    done = where / "finished.json"
    initial = exact_potential(model)
    dataset, indices = _weighted(old_data, labels, config, number)
    n_valid = len(indices["valid"])
    train_config = TrainConfig(
        n_train=len(indices["train"]), n_valid=n_valid, n_test=0, split_seed=config.seed + number,
        model=initial.model.config, learning_rate=config.learning_rate, lr_decay_rate=config.lr_decay,
        lr_decay_steps=config.steps, energy_weight=config.energy_weight, grad_clip=config.grad_clip,
        batch_size=min(config.batch_size, len(dataset) - n_valid), valid_every=min(config.valid_every, config.steps),
        max_steps=config.steps, seed=config.seed + number, members=initial.members or 1)
    if done.is_file():
        return json.loads(done.read_text())
    run = iterate(train_config, dataset, where, resume=(where / STATE_FILE).is_file(), progress=False,
                  initial=initial, indices=indices,
                  data_info={"source": f"refine round {number}: {len(old_data)} training frames + {len(labels)} xTB "
                                       f"labels of the rounds so far (each {config.label_weight}x in training)"})
    while True:
        try:
            next(run)  # one validation, its state saved: the place to stop
        except StopIteration as finished:
            result = finished.value
            break
        if stop.is_set():
            run.close()
            raise RefineStopped(f"refinement stopped while fine-tuning (round {number}); rerun to resume")
    atomic_write(done, json.dumps(result.best_valid).encode())
    return result.best_valid


def _weighted(old_data: Dataset, labels: Dataset, config: RefineConfig, number: int
              ) -> tuple[Dataset, dict[str, np.ndarray]]:
    """The fine-tuning's frames and split: the validation frames are drawn (seeded) from the old
    frames and labels together, then every label left for training gets ``label_weight - 1`` more
    copies, appended, in training too (with weight 1: exactly the seeded split of old + labels)."""
    from so3krates.data import split

    dataset = concatenate([old_data, labels])
    n_valid = max(1, int(round(config.valid_fraction * len(dataset))))
    indices = split(len(dataset), len(dataset) - n_valid, n_valid, 0, seed=config.seed + number)
    trained_labels = indices["train"][indices["train"] >= len(old_data)]
    if config.label_weight == 1 or not len(trained_labels):
        return dataset, indices
    copies = dataset.subset(np.tile(trained_labels, config.label_weight - 1))
    extra = np.arange(len(dataset), len(dataset) + len(copies))
    return concatenate([dataset, copies]), {**indices, "train": np.concatenate([indices["train"], extra])}


def _errors(model, labels: Dataset) -> dict[str, float]:
    metrics = evaluate_model(model, labels, dtype="float64")
    return {"forces_mae": metrics.forces_mae, "energy_per_atom_mae": metrics.energy_per_atom_mae}


# --- data, records and reports -------------------------------------------------------------------

def _old_training_data(model_dir: Path, data: str | os.PathLike | None,
                       own_refinement: bool = True) -> tuple[Dataset, str]:
    """The frames the model trained and validated on (its test frames stay out), and a note saying which.
    A refined model's: its starting model's (the data its provenance names, through the split it
    keeps) and the labels of its refinement (``refine_labels.extxyz`` beside it)."""
    from so3krates.catalog import DATA
    from so3krates.data import filter_frames

    provenance = json.loads((model_dir / "config.json").read_text()).get("provenance", {})
    refined = provenance.get("refine") if own_refinement else None
    if refined and data is None:
        labels_file = model_dir / str(refined.get("labels", REFINE_LABELS))
        if not labels_file.is_file() or not (model_dir / "split.npz").is_file():
            raise FileNotFoundError(f"{model_dir} was refined, but its {REFINE_LABELS} or split.npz is missing; pass "
                                    "the data it was trained on with --data")
        base, note = _old_training_data(model_dir, data, own_refinement=False)
        labels = read(labels_file)
        return concatenate([base, labels]), f"{note}, and the {len(labels)} xTB labels of its refinement"
    record = provenance.get("training", {}).get("data", {})
    if data is None:
        source = record.get("source")
        if not source:
            raise ValueError(f"{model_dir}: its provenance names no training data; pass the data it was trained on (--data)")
        candidates = [Path(source), DATA.parent / source]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{model_dir} was trained on {source}, which is not here; pass it with --data")
        data = found
    units = dict(energy_unit=record.get("energy_unit"), length_unit=record.get("length_unit", "Angstrom"))
    dataset = read(data, **units)
    try:
        parts = [select_frames(model_dir, dataset, part)[0] for part in ("train", "valid")]
        note = f"the train and validation frames of {data} (its test frames held out)"
    except ValueError:  # not the model's split (another file): every frame, after the usual filter
        parts = [filter_frames(dataset)[0]]
        note = f"all {len(parts[0])} frames of {data}"
    extra = _extra_training_frames(record, units)
    if extra is not None:
        parts.append(extra)
        note += f", and its {len(extra)} extra training frames"
    return concatenate(parts), note


def _extra_training_frames(record: dict[str, Any], units: dict[str, Any]) -> Dataset | None:
    """The frames a model trained on beside its split (``so3krates train --extra-train``), read and
    filtered as that training did; None when there were none."""
    from so3krates.catalog import DATA
    from so3krates.data import filter_frames

    extra = record.get("extra_train")
    if not extra:
        return None
    files = []
    for source in extra.get("sources", []):
        found = next((p for p in (Path(source), DATA.parent / source) if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"the model also trained on {source}, which is not here; its old training data "
                                    "cannot be rebuilt without it")
        files.append(read(found, **units))
    frames = concatenate(files)
    if record.get("filter"):
        frames, _ = filter_frames(frames, **record["filter"])
    return frames


def _label_files(out: Path, number: int) -> list[Path]:
    """The label files of the rounds before ``number``: each of those rounds fine-tuned on its
    selection's labels and on its displaced minima."""
    return [path for k in range(1, number) for part in ("labels", "displaced") for path in sorted(
        (out / f"round{k}" / part).glob("*.extxyz"), key=lambda p: int(p.stem))]


def _labels_before(out: Path, number: int) -> Dataset | None:
    """Every label of the rounds before ``number`` (None before the first)."""
    files = _label_files(out, number)
    return concatenate([read(path) for path in files]) if files else None


def _check_or_write_record(out: Path, model_dir: Path, atoms: ase.Atoms, config: RefineConfig, old_data: Dataset,
                           potential) -> None:
    from so3krates.evaluation import fingerprint
    from so3krates.train.loop import parameters_fingerprint

    record = {"format": FORMAT, "model": str(model_dir.resolve()), "model_fingerprint": parameters_fingerprint(potential),
              "numbers": atoms.numbers.tolist(), "positions": np.round(atoms.positions, 8).tolist(),
              "charge": int(atoms.info.get("charge", 0)), "multiplicity": int(atoms.info.get("multiplicity", 1)),
              "data_fingerprint": fingerprint(old_data), "config": _jsonable(config.identity())}
    path = out / "refine.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable refinement record ({error})") from None
        differences = [key for key in record if key != "model" and saved.get(key) != record[key]]
        if differences:
            raise ValueError(f"{out} holds a refinement with different {', '.join(differences)}; rerun it with the "
                             "same model, molecule, data and settings to resume, or choose another --out")
        return
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: is not empty and holds no refinement; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, indent=1).encode())


def _jsonable(values):
    return json.loads(json.dumps(values, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _start_model(out: Path) -> Path:
    """The checkpoint a refinement started from (as refine.json records it)."""
    return Path(json.loads((out / "refine.json").read_text())["model"])


def _save_refined(potential, out: Path, number: int, tuned: Path) -> None:
    """``OUT/model``: the fine-tuned parameters, with everything a later refinement (or an
    evaluation) needs, so the directory can be copied anywhere (the shipped models are):

    * the provenance of the starting model (so the training data it names stays the original
      file) and where this refinement ran;
    * the starting model's ``split.npz``: the test frames neither model trained on;
    * ``refine_labels.extxyz``: every xTB label it was fine-tuned on beyond that data (those of
      the starting model's own refinement first)."""
    start_model = _start_model(out)
    start = json.loads((start_model / "config.json").read_text()).get("provenance", {})
    training = json.loads((tuned / "config.json").read_text()).get("provenance", {}).get("training")
    provenance = {**start, "refine": {"start_model": str(start_model.resolve()), "out": str(out.resolve()),
                                      "round": number, "training": training, "labels": REFINE_LABELS}}
    model = out / "model"
    save_model(potential, model, provenance=provenance)
    if (start_model / "split.npz").is_file():
        atomic_write(model / "split.npz", (start_model / "split.npz").read_bytes())
    earlier = start_model / REFINE_LABELS if start.get("refine", {}).get("labels") else None
    texts = [earlier.read_text()] if earlier is not None else []
    texts += [path.read_text() for path in _label_files(out, number + 1)]
    atomic_write(model / REFINE_LABELS, "".join(texts).encode("ascii"))


def _write_summary(out: Path, reports: list[RoundReport], data_note: str) -> None:
    rows = [r.to_dict() for r in reports]
    atomic_write(out / "report.json", json.dumps({"format": FORMAT, "old_data": data_note, "rounds": rows},
                                                 indent=1).encode())
    columns = ("round", "hops", "minima", "validated", "confirmed", "fraction_confirmed", "relative_energy_mae",
               "relative_energy_max", "sampled_uncertainty", "labels", "forces_mae_new_before", "forces_mae_new_after",
               "forces_mae_displaced", "valid_forces_mae", "cpu_seconds", "converged")
    lines = [",".join(columns)]
    for r in reports:
        before, after = r.new_error_before or {}, r.new_error_after or {}
        values = (r.round, r.hops, r.minima, r.validated, r.confirmed, r.fraction_confirmed, r.relative_energy_mae,
                  r.relative_energy_max, r.sampled_uncertainty, sum(r.labels_added.values()), before.get("forces_mae"),
                  after.get("forces_mae"), (r.displaced_error or {}).get("forces_mae"), r.valid_forces_mae,
                  round(sum(r.cpu_seconds.values()), 1), r.converged)
        lines.append(",".join("" if v is None else str(v) for v in values))
    atomic_write(out / "rounds.csv", ("\n".join(lines) + "\n").encode())
    _plot(out / "rounds.png", reports)


def _plot(path: Path, reports: list[RoundReport]) -> None:
    from matplotlib.figure import Figure  # the object API: the process's pyplot backend stays as it is

    figure = Figure(figsize=(9, 3.2), layout="constrained")
    confirmed, labels, errors = figure.subplots(1, 3)
    rounds = [r.round for r in reports]
    confirmed.plot(rounds, [r.fraction_confirmed or 0 for r in reports], "o-")
    confirmed.axhline(0.9, color="grey", ls=":")
    confirmed.set(xlabel="round (model explored with)", ylabel="minima confirmed by xTB", ylim=(-0.05, 1.05))
    labels.bar(rounds, [sum(r.labels_added.values()) for r in reports])
    labels.set(xlabel="round", ylabel="labels added")
    labelled = [r for r in reports if r.new_error_before]
    if labelled:
        x = [r.round for r in labelled]
        errors.plot(x, [r.new_error_before["forces_mae"] for r in labelled], "o-", label="before fine-tuning")
        errors.plot(x, [r.new_error_after["forces_mae"] for r in labelled], "s-", label="after")
    measured = [r for r in reports if r.displaced_error]
    if measured:
        errors.plot([r.round for r in measured], [r.displaced_error["forces_mae"] for r in measured], "^--",
                    label="displaced minima (unseen)")
    if labelled or measured:
        errors.legend(fontsize="small")
    errors.set(xlabel="round", ylabel="force MAE on new labels (eV/Å)")
    for axes in (confirmed, labels, errors):
        axes.set_xticks(rounds)
    buffer = __import__("io").BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    atomic_write(path, buffer.getvalue())


def _save_npz(path: Path, **arrays) -> None:
    buffer = __import__("io").BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


# --- where xTB runs: the exploration's schedulers -----------------------------------------------

def _run_tasks(scheduler: str, tasks: list[tuple[Callable, tuple]], stop: threading.Event) -> Iterable[Any]:
    """Results of ``function(*arguments)`` for each task, as they finish: in this process one at a
    time ("threads": xTB parallelises itself with OpenMP), or on Dask workers (single-threaded
    each), where a LocalCluster ("local") is started for the call. Stops (RefineStopped) at the
    first result after ``stop`` is set; the tasks not started are dropped."""
    if not tasks:
        return
    if scheduler == "threads":
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="so3krates-xtb") as pool:
            futures = [pool.submit(f, *args) for f, args in tasks]
            try:
                for future in concurrent.futures.as_completed(futures):
                    yield future.result()
                    _check(stop)
            finally:
                for future in futures:
                    future.cancel()
        return
    from so3krates.explore.campaign import _import_distributed, dask_client

    distributed = _import_distributed()
    client, cluster = dask_client(scheduler, len(tasks))
    try:
        futures = [client.submit(f, *args, pure=False) for f, args in tasks]
        for future in distributed.as_completed(futures):
            yield future.result()
            _check(stop)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise RefineStopped("refinement stopped; rerun to resume")
