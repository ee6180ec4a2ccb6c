"""The training loop: a run directory, a generator of validation records, the best model kept.

A run lives in one directory ``OUT``::

    OUT/train_config.json   the TrainConfig and where the data came from (the run's identity)
    OUT/split.npz           the seeded train/valid/test split of the (filtered) data
    OUT/state.msgpack       the resumable training state (saved at every validation)
    OUT/log.jsonl           one JSON line per validation
    OUT/best/               the best model so far: so3krates.load_model(OUT/best), with split.npz

A committee (``TrainConfig.members = K > 1``, ``so3krates train --ensemble K``) is one run: K
parameter sets (member k initialised with ``seed + k``) stacked along a leading axis, each
member with its own frame order over the same training frames, all updated by one jitted step;
validation scores the members' mean, and OUT/best is one committee checkpoint.

Fine-tuning (``initial=`` a Potential, as ``so3krates refine`` does): training starts from that
model's parameters (a committee's members from its members) with its per-element energy shifts
(refitting them would move every energy the parameters learned), and ``config.model`` must be its
configuration.

Extra training frames (``extra_train=``, ``so3krates train --extra-train FILE``) join the training
set of every epoch and are never validated or tested on: labelled distortions, say, that teach the
model where its data does not go, while the split of the main data (and so its held-out test
frames) stays exactly that of a run without them.

Everything is written to a temporary file and renamed. Calling :func:`train` again on the same
directory resumes from the last saved state and, training being deterministic, ends with the
same parameters as an uninterrupted run. A directory holding a different run (config or data),
or a finished one, is refused unless ``overwrite=True``; a finished run whose stopping limits
(max_steps, max_epochs, max_time) were raised continues.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import shutil
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from so3krates.checkpoint import CONFIG_FILE, PARAMS_FILE, load_model, save_model
from so3krates.data import Dataset, concatenate, fit_energy_shifts, save_split, split
from so3krates.data.prepare import SPLIT_NAMES, validate_split
from so3krates.data.batching import Batch, PairCache, ShapePlan, batches, pack
from so3krates.evaluation import SPLIT_FILE, compute_metrics, fingerprint, predict_batches
from so3krates.files import atomic_write
from so3krates.potential import Potential, init_model
from so3krates.train.config import TrainConfig
from so3krates.train.state import TrainState, load_state, save_state
from so3krates.train.step import learning_rate_schedule, make_optimizer, make_train_step

RUN_CONFIG = "train_config.json"
STATE_FILE = "state.msgpack"
LOG_FILE = "log.jsonl"
BEST_DIR = "best"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    model_dir: Path  # OUT/best: load with so3krates.load_model
    best_step: int
    best_valid: dict[str, Any]  # validation metrics of the best model (Metrics.to_dict())
    steps: int
    epochs: int
    stop_reason: str
    elapsed: float  # seconds of training, all sessions

    def load(self) -> Potential:
        return load_model(self.model_dir)


def train(
    config: TrainConfig,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data_info: dict[str, Any] | None = None,
    progress: bool = True,
    initial: Potential | None = None,
    indices: dict[str, np.ndarray] | None = None,
    extra_train: Dataset | None = None,
) -> TrainResult:
    """Train an SO3krates model on ``dataset`` into ``out_dir`` (see the module docstring).

    ``resume=True`` requires a saved state to continue from (by default one is used if present).
    ``data_info`` (where the data came from: path, units, filter settings) is recorded in the
    run's config and the model's provenance; ``data_info["filter"]`` (the keyword arguments of
    :func:`so3krates.data.filter_frames` that made ``dataset``) lets ``so3krates evaluate``
    find the held-out frames again. ``indices``: the split to use instead of the seeded one
    (see :func:`iterate`). ``extra_train``: frames added to the training set only (the module
    docstring).
    """
    run = iterate(config, dataset, out_dir, resume=resume, overwrite=overwrite, data_info=data_info, progress=progress,
                  initial=initial, indices=indices, extra_train=extra_train)
    while True:
        try:
            next(run)
        except StopIteration as stop:
            return stop.value


def iterate(
    config: TrainConfig,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data_info: dict[str, Any] | None = None,
    progress: bool = True,
    initial: Potential | None = None,
    indices: dict[str, np.ndarray] | None = None,
    extra_train: Dataset | None = None,
) -> Generator[dict[str, Any], None, TrainResult]:
    """:func:`train` as a generator: yields each validation record (as written to the log) and
    returns the :class:`TrainResult`. Stopping the iteration between records is exactly what a
    killed process leaves behind. ``indices``: the split to use (``{"train", "valid"}`` index
    arrays of ``config.n_train`` and ``config.n_valid`` frames) instead of the seeded one;
    ``extra_train``: frames added to the training set only."""
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    run, state = _open_run(config, dataset, Path(out_dir), resume, overwrite, data_info, initial, indices, extra_train)
    out = run.out
    step_fn = make_train_step(run.model, config, make_optimizer(config))
    schedule = learning_rate_schedule(config)
    params, opt_state = jax.device_put(state.params), jax.device_put(state.opt_state)
    loss_sum = jax.device_put(state.loss_sum)
    session_start, elapsed_before = time.monotonic(), state.elapsed
    total = config.max_steps if config.max_time is None else None  # a time limit makes the step count unknown
    bar = tqdm(total=total, initial=state.step, disable=not progress, unit="step", dynamic_ncols=True,
               desc=f"training {out.name}")

    def elapsed() -> float:  # seconds of training, all sessions
        return elapsed_before + time.monotonic() - session_start

    def validate(state: TrainState, final: bool) -> tuple[TrainState, dict[str, Any]]:
        state, record = _validate(run, state, params, elapsed, float(schedule(state.step)), final)
        bar.set_postfix_str(f"valid F MAE {record['valid_forces_mae']:.4f} eV/Å, E MAE {record['valid_energy_mae']:.4f}"
                            f" eV (best step {state.best_step})", refresh=False)
        return state, record

    def snapshot(state: TrainState) -> TrainState:  # host copies: the device buffers are donated next step
        copy = lambda tree: jax.tree.map(lambda x: np.array(x), tree)  # noqa: E731
        return dataclasses.replace(state, params=copy(params), opt_state=copy(opt_state), loss_sum=np.array(loss_sum))

    try:
        while True:
            state = dataclasses.replace(state, elapsed=elapsed())
            reason = _stop_reason(config, state, run.batches_per_epoch)
            if reason:
                break
            state, batch = _next_batch(run, state)
            previous = loss_sum
            params, opt_state, loss_sum = step_fn(params, opt_state, loss_sum, batch)
            previous.block_until_ready()  # run at most one step ahead of the device
            state = dataclasses.replace(state, step=state.step + 1, batch_in_epoch=state.batch_in_epoch + 1,
                                        steps_since_validation=state.steps_since_validation + 1)
            bar.update(1)
            if state.step % config.valid_every == 0:
                state, record = validate(snapshot(state), final=False)
                loss_sum = jax.device_put(np.zeros_like(state.loss_sum))
                state = dataclasses.replace(state, loss_sum=np.zeros_like(state.loss_sum))
                save_state(out / STATE_FILE, state, config)
                yield record
        state, record = snapshot(state), None
        if state.steps_since_validation:
            state, record = validate(state, final=True)
        state = dataclasses.replace(state, loss_sum=np.zeros_like(state.loss_sum), stop_reason=reason)
        save_state(out / STATE_FILE, state, config)
        if record is not None:
            yield record
    finally:
        bar.close()
    best = _best_metrics(out)
    return TrainResult(out_dir=out, model_dir=out / BEST_DIR, best_step=state.best_step, best_valid=best,
                       steps=state.step, epochs=state.epoch, stop_reason=state.stop_reason, elapsed=state.elapsed)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What stays fixed during a training session: the directory, the split data, the model."""

    out: Path
    config: TrainConfig
    model: Any  # the AtomicEnergyModel (SO3kratesEnergy) being trained
    elements: tuple[int, ...]
    shifts: np.ndarray  # per-element energy shifts fitted on the training set
    data_info: dict[str, Any]  # where the data came from, recorded in the best model's provenance
    indices: dict[str, np.ndarray]  # the split
    split_metadata: dict[str, Any]  # saved with the split, so `so3krates evaluate` can match data to it
    train_cache: PairCache
    valid_cache: PairCache
    valid_batches: list  # the whole validation set, packed once and kept on the device
    plan: ShapePlan
    train_atoms: np.ndarray  # atoms per training frame (the cache computes it on every access)

    @property
    def num_train(self) -> int:  # the split's training frames and the extra ones
        return len(self.train_atoms)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_train // self.config.batch_size


def _open_run(config: TrainConfig, dataset: Dataset, out: Path, resume: bool, overwrite: bool,
              data_info: dict[str, Any] | None, initial: Potential | None,
              indices: dict[str, np.ndarray] | None = None,
              extra_train: Dataset | None = None) -> tuple[_Run, TrainState]:
    """Check (or create) the run directory, split and cache the data, and load or start the state."""
    if initial is not None:
        _check_initial(initial, config, dataset)
    data_info = {**(data_info or {}), "source": (data_info or {}).get("source", dataset.source),
                 "num_frames": len(dataset), "fingerprint": fingerprint(dataset)}
    if extra_train is not None:
        _check_extra(extra_train, dataset)
        data_info["extra_train"] = {**data_info.get("extra_train", {}), "num_frames": len(extra_train),
                                    "fingerprint": fingerprint(extra_train)}
    if initial is not None:  # another starting model makes another run (the identity check sees it)
        data_info["initial_model"] = parameters_fingerprint(initial)
    if indices is None:
        indices = split(len(dataset), config.n_train, config.n_valid, config.n_test, seed=config.split_seed)
    else:
        indices = {name: np.sort(np.asarray(indices.get(name, ()), np.int64)) for name in SPLIT_NAMES}
        validate_split(indices, "the given split")
        sizes = {name: len(indices[name]) for name in SPLIT_NAMES}
        if sizes["train"] != config.n_train or sizes["valid"] != config.n_valid or max(
                (int(part.max()) for part in indices.values() if len(part)), default=-1) >= len(dataset):
            raise ValueError(f"the given split ({sizes}) does not fit n_train={config.n_train}, "
                             f"n_valid={config.n_valid} and {len(dataset)} frames")
    has_state = _prepare_directory(out, config, data_info, resume, overwrite)
    train_set, valid_set = dataset.subset(indices["train"]), dataset.subset(indices["valid"])
    if extra_train is not None:
        train_set = concatenate([train_set, extra_train])
    shifts = fit_energy_shifts(train_set) if initial is None else np.asarray(initial.energy_shifts, np.float64)
    long_range = config.model.long_range_cutoff if config.model.has_long_range else None
    inputs = dict(long_range_cutoff=long_range, takes_charge=config.model.takes_charge,
                  takes_spin=config.model.takes_spin)
    train_cache = PairCache.build(train_set, config.model.cutoff, shifts, **inputs)
    valid_cache = PairCache.build(valid_set, config.model.cutoff, shifts, **inputs)
    valid_batches = [jax.device_put(b) for b in batches(
        valid_cache, np.arange(len(valid_set)), min(config.batch_size, len(valid_set)), uniform=True,
        dtype=_numpy_dtype(config))]
    split_metadata = dict(seed=config.split_seed, source=data_info["source"], fingerprint=data_info["fingerprint"],
                          filter=data_info.get("filter"), num_frames=len(dataset))
    fresh, model = _fresh_state(config, dataset, len(train_set), initial)
    elements = dataset.elements if initial is None or not initial.elements else initial.elements
    run = _Run(out=out, config=config, model=model, elements=elements, shifts=shifts, data_info=data_info,
               indices=indices, split_metadata=split_metadata, train_cache=train_cache, valid_cache=valid_cache,
               valid_batches=valid_batches, plan=ShapePlan.for_cache(train_cache, config.batch_size),
               train_atoms=train_cache.num_atoms)
    return run, _resume_or_start(run, fresh, has_state)


def _resume_or_start(run: _Run, fresh: TrainState, has_state: bool) -> TrainState:
    """The saved state of an unfinished run (its log cut back to that state), or ``fresh`` with the
    run's files written; either way the run record is rewritten with the current stopping limits."""
    out, config = run.out, run.config
    run_record = json.dumps({"train_config": config.to_dict(), "data": run.data_info}, indent=2).encode()
    if has_state:
        state = load_state(out / STATE_FILE, fresh, config)
        reason = _stop_reason(config, state, run.batches_per_epoch)
        if reason:
            raise FileExistsError(
                f"{out}: holds a finished run ({state.stop_reason}; {reason}); pass --overwrite to start over, "
                "or raise --max-steps / --max-epochs / --max-time to continue it")
        state = dataclasses.replace(state, stop_reason="")
        _truncate_log(out / LOG_FILE, state.step)
    else:
        state = fresh
        atomic_write(out / RUN_CONFIG, run_record)
        save_split(out / SPLIT_FILE, run.indices, overwrite=True, **run.split_metadata)
        save_state(out / STATE_FILE, state, config)
        atomic_write(out / LOG_FILE, b"")
    atomic_write(out / RUN_CONFIG, run_record)  # new stopping limits
    return state


def _next_batch(run: _Run, state: TrainState) -> tuple[TrainState, Batch]:
    """The next training batch; after the last one of an epoch the next epoch starts in a new order.
    A committee gets one batch per member (its own order), padded to one shape and stacked."""
    config = run.config
    if state.batch_in_epoch == run.batches_per_epoch:
        key, order = _draw_order(state.key, config, run.num_train)
        state = dataclasses.replace(state, epoch=state.epoch + 1, batch_in_epoch=0, order=order, key=np.asarray(key))
    start = state.batch_in_epoch * config.batch_size
    chosen = state.order[..., start:start + config.batch_size]
    if config.members == 1:
        shape = run.plan.shape(int(run.train_atoms[chosen].sum()))
        return state, pack(run.train_cache, chosen, shape, config.batch_size, _numpy_dtype(config))
    shape = run.plan.shape(int(run.train_atoms[chosen].sum(axis=-1).max()))
    packed = [pack(run.train_cache, member, shape, config.batch_size, _numpy_dtype(config)) for member in chosen]
    return state, jax.tree.map(lambda *leaves: np.stack(leaves), *packed)


def _draw_order(key, config: TrainConfig, num_train: int) -> tuple[jax.Array, np.ndarray]:
    """The next key and an epoch's order of the ``num_train`` training frames: (num_train,), or
    (members, num_train) for a committee."""
    key, sub = jax.random.split(key)
    if config.members == 1:
        return key, np.asarray(jax.random.permutation(sub, num_train), np.int64)
    keys = jax.random.split(sub, config.members)
    return key, np.stack([np.asarray(jax.random.permutation(k, num_train), np.int64) for k in keys])


def _members(config: TrainConfig) -> int | None:
    """The Potential's ``members`` for this run: None for a single model."""
    return None if config.members == 1 else config.members


def _validate(run: _Run, state: TrainState, params, elapsed: Callable[[], float], lr: float,
              final: bool) -> tuple[TrainState, dict[str, Any]]:
    """Evaluate ``params`` on the validation set, save them as OUT/best when they improved, and log
    the record. ``state`` is a host snapshot; the returned one has the best and patience updated."""
    config = run.config
    potential = Potential(model=run.model, params=params, energy_shifts=run.shifts, elements=run.elements,
                          members=_members(config))
    predictions = predict_batches(potential, run.valid_cache, run.valid_batches, config.dtype)
    metrics = compute_metrics(predictions)
    valid_loss = _loss(predictions, config)
    improved = valid_loss < state.best_loss
    seconds = elapsed()
    record = {
        "step": state.step, "epoch": state.epoch, "wall_time": round(seconds, 3),
        "train_loss": float(state.loss_sum) / max(state.steps_since_validation, 1),
        "valid_loss": valid_loss,
        "valid_energy_mae": metrics.energy_mae, "valid_energy_rmse": metrics.energy_rmse,
        "valid_energy_per_atom_mae": metrics.energy_per_atom_mae,
        "valid_forces_mae": metrics.forces_mae, "valid_forces_rmse": metrics.forces_rmse,
        "lr": lr, "best": bool(improved), "final": final,
    }
    bad = state.bad_validations
    if improved:
        provenance = {"training": {
            "train_config": config.to_dict(), "data": run.data_info, "step": state.step, "epoch": state.epoch,
            "valid_loss": valid_loss, "valid_metrics": metrics.to_dict(), "training_time_s": round(seconds, 1),
            "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "split": SPLIT_FILE,
        }}
        best_dir = run.out / BEST_DIR
        save_model(potential, best_dir, provenance=provenance)
        save_split(best_dir / SPLIT_FILE, run.indices, overwrite=True, **run.split_metadata)
        bad = 0
    elif not final:  # an extra validation at the stop does not count towards patience
        bad += 1
    state = dataclasses.replace(
        state, best_loss=min(valid_loss, state.best_loss), best_step=state.step if improved else state.best_step,
        bad_validations=bad, elapsed=seconds, steps_since_validation=0)
    with open(run.out / LOG_FILE, "a") as log:
        log.write(json.dumps(record) + "\n")
    return state, record


def _check_initial(initial: Potential, config: TrainConfig, dataset: Dataset) -> None:
    """A model to fine-tune must be the architecture, committee size and elements of the run."""
    problems = []
    if initial.model.config != config.model:
        problems.append("its model configuration differs from the training configuration's")
    if (initial.members or 1) != config.members:
        problems.append(f"it has {initial.members or 1} member(s), the run {config.members}")
    missing = sorted(set(dataset.elements) - set(initial.elements)) if initial.elements else []
    if missing:
        problems.append(f"it does not know the elements {missing} of the data")
    if problems:
        raise ValueError("cannot fine-tune the given model: " + "; ".join(problems))


def _check_extra(extra: Dataset, dataset: Dataset) -> None:
    """Extra training frames must be made of the main data's elements (the model is built for those)."""
    missing = sorted(set(extra.elements) - set(dataset.elements))
    if missing:
        raise ValueError(f"{extra.source}: the extra training frames hold elements {missing} that the training data "
                         f"({dataset.source}, elements {sorted(dataset.elements)}) does not; the model would not know them")


def parameters_fingerprint(potential: Potential) -> str:
    """A short hash of a model's parameters and energy shifts."""
    import hashlib

    digest = hashlib.sha256(np.asarray(potential.energy_shifts, np.float64).tobytes())
    for leaf in jax.tree.leaves(potential.params):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()[:16]


def _fresh_state(config: TrainConfig, dataset: Dataset, num_train: int, initial: Potential | None = None):
    potential = init_model(config.model, dataset.elements, seed=config.seed) if initial is None else initial
    dtype = _numpy_dtype(config)
    cast = lambda x: np.asarray(x, dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x)  # noqa: E731
    params = jax.tree.map(cast, potential.params)
    optimizer = make_optimizer(config)
    if config.members == 1 or initial is not None:  # a committee to fine-tune comes stacked
        opt_state = jax.tree.map(np.asarray, (jax.vmap(optimizer.init) if config.members > 1 else optimizer.init)(params))
    else:  # member k from seed + k, stacked along a leading axis (member 0 is the single model's start)
        members = [params] + [jax.tree.map(cast, init_model(config.model, dataset.elements, seed=config.seed + k).params)
                              for k in range(1, config.members)]
        params = jax.tree.map(lambda *leaves: np.stack(leaves), *members)
        opt_state = jax.tree.map(np.asarray, jax.vmap(optimizer.init)(params))
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)  # not the initialisation's key
    key, order = _draw_order(key, config, num_train)
    state = TrainState(params=params, opt_state=opt_state, loss_sum=np.zeros((), dtype), step=0, epoch=1,
                       batch_in_epoch=0, order=order, key=np.asarray(key))
    return state, potential.model


def _numpy_dtype(config: TrainConfig) -> type:
    return np.float32 if config.dtype == "float32" else np.float64


def _stop_reason(config: TrainConfig, state: TrainState, batches_per_epoch: int) -> str:
    if config.max_steps is not None and state.step >= config.max_steps:
        return f"reached max_steps={config.max_steps}"
    if config.max_epochs is not None and state.epoch >= config.max_epochs and state.batch_in_epoch >= batches_per_epoch:
        return f"reached max_epochs={config.max_epochs}"
    if config.max_time is not None and state.elapsed >= config.max_time:
        return f"reached max_time={config.max_time:g} s"
    if config.patience is not None and state.bad_validations >= config.patience:
        return f"no improvement in {config.patience} validations (early stopping)"
    return ""


def _loss(predictions, config: TrainConfig) -> float:
    """The training loss over a whole set (per-atom energy MSE and force-component MSE)."""
    per_atom = (predictions.energy_predicted - predictions.energy_reference) / predictions.num_atoms
    forces = np.concatenate([p - r for p, r in zip(predictions.forces_predicted, predictions.forces_reference)])
    return float(config.energy_weight * np.mean(per_atom**2) + config.forces_weight * np.mean(forces**2))


def _prepare_directory(out: Path, config: TrainConfig, data_info: dict, resume: bool, overwrite: bool) -> bool:
    """Check what ``out`` holds; return whether a training state is there to resume from."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    run_config, state = out / RUN_CONFIG, out / STATE_FILE
    if overwrite and out.is_dir():
        _remove_run(out)
    elif resume and not state.is_file():
        raise FileNotFoundError(f"{state}: no training state to resume from")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        return False
    if run_config.is_file():
        try:
            saved = json.loads(run_config.read_text())
            saved_config = TrainConfig.from_dict(saved["train_config"])
            saved_data = (saved["data"]["fingerprint"], saved["data"].get("initial_model"),
                          saved["data"].get("extra_train", {}).get("fingerprint"))
        except Exception as error:
            raise FileExistsError(f"{run_config}: unreadable run record ({error}); pass --overwrite to start over") from None
        differences = sorted(k for k, v in config.identity().items() if saved_config.identity().get(k) != v)
        data = (data_info["fingerprint"], data_info.get("initial_model"), data_info.get("extra_train", {}).get("fingerprint"))
        if differences or saved_data != data:
            what = (f"options {differences}" if differences else "data (different frames, units or filter)"
                    if saved_data[0] != data[0] else "starting model (fine-tuning)" if saved_data[1] != data[1]
                    else "extra training frames")
            raise FileExistsError(
                f"{out}: holds a run with different {what}; pass --overwrite to replace it, or choose another --out")
    elif any(out.iterdir()):
        raise FileExistsError(f"{out}: is not empty and holds no so3krates training run; choose another --out")
    return run_config.is_file() and state.is_file()


def _remove_run(out: Path) -> None:
    """Delete a previous run's own files (and nothing else) from ``out``."""
    for name in (STATE_FILE, LOG_FILE, SPLIT_FILE, RUN_CONFIG):
        (out / name).unlink(missing_ok=True)
    best = out / BEST_DIR
    if best.is_dir():
        for name in (CONFIG_FILE, PARAMS_FILE, SPLIT_FILE):
            (best / name).unlink(missing_ok=True)
        if not any(best.iterdir()):
            shutil.rmtree(best)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the saved state (they will be written again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if record.get("step", math.inf) <= step:
            kept.append(line)
    atomic_write(path, "".join(line + "\n" for line in kept).encode())


def _best_metrics(out: Path) -> dict[str, Any]:
    path = out / BEST_DIR / CONFIG_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("provenance", {}).get("training", {}).get("valid_metrics", {})
