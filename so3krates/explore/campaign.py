"""Many minima-hopping walkers at once, on threads or on Dask, streaming into one store and one graph.

An :class:`Exploration` owns its walkers' bookkeeping (state files, store writes, the feedbacks)
and hands out only their excursions (escape MD + relaxation, the expensive part) as small tasks
(:class:`~so3krates.explore.hopping.ExcursionTask`). Where the tasks run is the ``scheduler``:

* ``"threads"``: a thread pool in this process (the dashboard's default: no start-up cost);
* ``"local"``: a Dask ``LocalCluster`` on 127.0.0.1, one single-threaded worker process per
  walker up to the number of cores;
* anything else: the address of a running Dask scheduler (``tcp://host:8786``).

Because the state stays here, a worker that dies loses nothing: its task is sent again (Dask
retries it on another worker by itself; should Dask give up, the driver resubmits it), from the
walker's last checkpoint. Killing the driver itself loses at most the hops in flight: every
walker writes its state after every hop and every store write is keyed ``"<walker>/<hop>"``, so
running the same exploration again resumes it without losing or duplicating a minimum.

Output directory: ``minima.sqlite`` (the store), ``walkers/walkerK.json`` (walker states),
``hops.jsonl`` (one line per hop, written before the walker's state: after a crash a hop may
appear twice, never not at all; :func:`read_hops` keeps the last), ``exploration.json`` (what was explored, with which
settings), ``pes_graph.graphml`` and ``pes_graph.json`` (the PES graph, refreshed as it grows).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import ase
import jax
import numpy as np

from so3krates.compilation import counted
from so3krates.extras import require
from so3krates.runtime import configure
from so3krates.explore.graph import export_beside
from so3krates.explore.hopping import (
    Excursion, ExcursionTask, HoppingConfig, HopResult, MinimaHoppingWalker, relax_start, run_excursion,
)
from so3krates.explore.store import MatchTolerances, MinimaStore
from so3krates.files import atomic_write

GRAPH_EXPORT_EVERY_S = 10.0
MAX_RESUBMITS = 5  # consecutive lost excursions of one walker before the exploration gives up


@dataclasses.dataclass(frozen=True)
class ExplorationConfig:
    walkers: int = 4
    hops: int = 200  # per walker, in total (a resumed exploration does only the rest)
    hopping: HoppingConfig = HoppingConfig()  # walker K uses seed hopping.seed + K
    scheduler: str = "local"  # "threads", "local" (Dask LocalCluster) or a Dask scheduler address
    tolerances: MatchTolerances = MatchTolerances()

    def __post_init__(self):
        problems = [f"{name} must be a positive integer, got {getattr(self, name)!r}" for name in ("walkers", "hops")
                    if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1)]
        if not isinstance(self.scheduler, str) or not self.scheduler:
            problems.append("scheduler must be 'threads', 'local' or a Dask scheduler address")
        if problems:
            raise ValueError("invalid ExplorationConfig: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class Progress:
    hops_done: int
    hops_total: int
    minima_found: int  # hops (and walker starts) that relaxed into a minimum
    unique: int  # distinct minima in the store
    transitions: int  # distinct pairs of minima seen connected
    hops_per_minute: float  # in this run (not counting hops done before a resume)
    state: str  # "idle", "running", "paused", "stopped", "finished", "failed"
    message: str = ""
    # XLA programs the walkers' work compiled in this run, wherever it ran (counted by JAX on the
    # thread or worker that compiled): a warm-up's worth, then no more
    compilations: int = 0
    last_compile_hop: int | None = None  # the hop (this run's count) that compiled last

    @property
    def done(self) -> bool:
        return self.state in ("stopped", "finished", "failed")


class Exploration:
    """N walkers from ``atoms`` with ``model`` (a Potential or energy callable) into ``out_dir``.

    ``start()`` returns at once (a driver thread hands out excursions and records results);
    ``run()`` blocks until done. ``on_hop(walker_name, HopResult)`` is called on the driver
    thread after every recorded hop.
    """

    def __init__(self, atoms: ase.Atoms, model, out_dir: str | os.PathLike, config: ExplorationConfig | None = None,
                 *, description: dict[str, Any] | None = None,
                 on_hop: Callable[[str, HopResult], None] | None = None):
        self.atoms, self.model = atoms.copy(), model
        self.config = ExplorationConfig() if config is None else config
        self.out_dir = Path(out_dir)
        self.on_hop = on_hop
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._check_or_write_description(description or {})
        self.store = MinimaStore(self.out_dir / "minima.sqlite", atoms.numbers, self.config.tolerances)
        self._lock = threading.Lock()
        self._stop, self._resume = threading.Event(), threading.Event()
        self._resume.set()
        self._thread: threading.Thread | None = None
        self._walkers: list[MinimaHoppingWalker] = []
        self._state, self._message = "idle", ""
        self._hops_at_start, self._started_at = 0, None
        self._hops_done = self._hops_before()
        self._compilations, self._last_compile_hop = 0, None

    # --- what is explored, checked on resume --------------------------------------------------

    def _check_or_write_description(self, description: dict[str, Any]) -> None:
        path = self.out_dir / "exploration.json"
        record = {"format": 1, "numbers": self.atoms.numbers.tolist(), "positions": self.atoms.positions.tolist(),
                  "hopping": self.config.hopping.to_dict(), "tolerances": dataclasses.asdict(self.config.tolerances),
                  **description}
        if path.exists():
            try:
                previous = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"{path}: not a readable exploration record ({error})") from None
            for key in ("numbers", "hopping", "tolerances"):
                if previous.get(key) != record[key]:
                    raise ValueError(f"{self.out_dir} holds an exploration with different {key}; "
                                     "resume it with the same settings or choose another output directory")
            return
        atomic_write(path, json.dumps(record, indent=1).encode())

    def _hops_before(self) -> int:
        states = self.out_dir / "walkers"
        total = 0
        for k in range(self.config.walkers):
            path = states / f"walker{k}.json"
            if path.exists():
                try:
                    total += int(json.loads(path.read_text())["hop"])
                except (OSError, ValueError, KeyError) as error:
                    raise ValueError(f"{path}: not a readable walker state ({error})") from None
        return total

    # --- control --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this exploration was started already")
        if self.config.scheduler != "threads":
            _import_distributed()  # a missing extra is the caller's error, not the driver thread's
        with self._lock:
            self._state, self._started_at = "running", time.monotonic()
            self._hops_at_start = self._hops_done
            self._thread = threading.Thread(target=self._drive, name="so3krates-exploration", daemon=True)
        self._thread.start()

    # Every change of ``_state`` holds ``_lock``: a pause racing the driver's end either comes
    # first (and the end overrides it) or finds the run ended (and does nothing), never leaves a
    # "paused" exploration without a driver.

    def pause(self) -> None:
        """No new excursions; those in flight finish and are recorded."""
        with self._lock:
            if self._state == "running":
                self._resume.clear()
                self._state = "paused"

    def resume(self) -> None:
        with self._lock:
            if self._state == "paused":
                self._state = "running"
                self._resume.set()

    def stop(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        """No new excursions; results still in flight are dropped (their walkers redo that hop
        on resume). Safe to call at any time."""
        with self._lock:
            self._stop.set()
            self._resume.set()
        if wait and self._thread is not None:
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> Progress:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.progress()

    def run(self, callback: Callable[[Progress], None] | None = None, every: float = 0.5) -> Progress:
        """Start and block until finished, stopped or failed; ``callback(progress)`` every ``every`` s.
        Ctrl-C stops the walkers (everything recorded so far is kept) and is raised again."""
        self.start()
        try:
            while self._thread.is_alive():
                self._thread.join(every)
                if callback is not None:
                    callback(self.progress())
        except KeyboardInterrupt:
            self.stop()
            raise
        progress = self.progress()
        if progress.state == "failed":
            raise RuntimeError(f"exploration failed: {progress.message}")
        return progress

    @property
    def active(self) -> bool:
        """The driver runs (exploring, paused, or ending after a stop)."""
        return self._thread is not None and self._thread.is_alive()

    def progress(self) -> Progress:
        minima, transitions = self.store.minima(), self.store.transitions()
        with self._lock:
            elapsed = 0.0 if self._started_at is None else time.monotonic() - self._started_at
            rate = 60.0 * (self._hops_done - self._hops_at_start) / elapsed if elapsed > 0 else 0.0
            return Progress(self._hops_done, self.config.walkers * self.config.hops, sum(m.count for m in minima),
                            len(minima), len(transitions), rate, self._state, self._message,
                            self._compilations, self._last_compile_hop)

    # --- the driver -----------------------------------------------------------------------------

    def _drive(self) -> None:
        backend = None
        ended, message = "failed", "interrupted"
        try:
            backend = _backend(self.config.scheduler, self.config.walkers, self.atoms, self.model, self.config.hopping)
            self._walkers = self._make_walkers(backend)
            self._loop(backend)
            ended = "stopped" if self._stop.is_set() and self._unfinished() else "finished"
            message = ""
        except Exception as error:  # noqa: BLE001 (the page and the CLI show it; the state is saved)
            ended, message = "failed", f"{type(error).__name__}: {error}"
        finally:
            if backend is not None:
                backend.close()
            exported = self._export_graph()
            with self._lock:
                self._state = ended
                self._message = "; ".join(m for m in (message, exported) if m)

    def _make_walkers(self, backend) -> list[MinimaHoppingWalker]:
        states = self.out_dir / "walkers"
        fresh = [k for k in range(self.config.walkers) if not (states / f"walker{k}.json").exists()]
        start = None
        if fresh:
            positions, energy, compilations = backend.result(backend.submit_start())
            start = positions, energy
            self._compilations += compilations
        return [MinimaHoppingWalker(self.atoms, self.model, self.store,
                                    dataclasses.replace(self.config.hopping, seed=self.config.hopping.seed + k),
                                    name=f"walker{k}", state_dir=states, start=start, log=self._log)
                for k in range(self.config.walkers)]

    def _unfinished(self) -> list[MinimaHoppingWalker]:
        return [w for w in self._walkers if w.hop_count < self.config.hops]

    def _loop(self, backend) -> None:
        in_flight: dict[Any, tuple[MinimaHoppingWalker, ExcursionTask]] = {}
        lost = {w.name: 0 for w in self._walkers}
        last_export = time.monotonic()
        while not self._stop.is_set():
            if self._resume.is_set():
                busy = {walker.name for walker, _ in in_flight.values()}
                for walker in self._unfinished():
                    if walker.name not in busy:
                        task = walker.next_task()
                        in_flight[backend.submit(task)] = (walker, task)
            if not in_flight:
                if not self._unfinished():
                    return
                self._resume.wait(0.2)
                continue
            for future in backend.wait_any(list(in_flight), timeout=0.2):
                walker, task = in_flight.pop(future)
                try:
                    excursion: Excursion = backend.result(future)
                except backend.lost_errors as error:
                    lost[walker.name] += 1
                    if lost[walker.name] > MAX_RESUBMITS:
                        raise RuntimeError(f"{walker.name}: excursion lost {lost[walker.name]} times "
                                           f"in a row ({error})") from error
                    continue  # handed out again from the same checkpoint on the next pass
                if self._stop.is_set():
                    break
                lost[walker.name] = 0
                result = walker.record(task, excursion)
                if self.on_hop is not None:
                    self.on_hop(walker.name, result)
            if time.monotonic() - last_export > GRAPH_EXPORT_EVERY_S:
                self._export_graph()
                last_export = time.monotonic()

    def _log(self, name: str, result: HopResult) -> None:
        with self._lock:
            self._hops_done += 1
            if result.compilations:
                self._compilations += result.compilations
                self._last_compile_hop = self._hops_done - self._hops_at_start
            line = json.dumps({"walker": name, "time": time.time(), **dataclasses.asdict(result)})
            with open(self.out_dir / "hops.jsonl", "a", encoding="utf-8") as log:
                log.write(line + "\n")

    def _export_graph(self) -> str:
        """Write the PES graph beside the store; returns "" or why it failed (also in the progress
        message: a view of the store is never worth losing a run over, but the user hears of it)."""
        try:
            export_beside(self.store)
        except (OSError, ValueError) as error:
            with self._lock:
                self._message = f"graph export failed: {error}"
            return self._message
        return ""


def read_hops(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The hop log of an exploration, one record per (walker, hop), in order of hop; a line cut
    short by a crash is skipped."""
    path = Path(out_dir) / "hops.jsonl"
    records: dict[tuple[str, int], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["walker"], record["hop"]] = record
    return [records[key] for key in sorted(records, key=lambda key: (key[1], key[0]))]


# --- where excursions run --------------------------------------------------------------------

def _import_distributed():
    return require("distributed", "explore",
                   "exploration on Dask (scheduler 'local' or an address; 'threads' needs no extra)")


def _backend(scheduler: str, walkers: int, atoms: ase.Atoms, model, config: HoppingConfig):
    if scheduler == "threads":
        return _Threads(walkers, atoms, model, config)
    return _Dask(scheduler, walkers, atoms, model, config)


class _Threads:
    lost_errors = (concurrent.futures.CancelledError,)

    def __init__(self, walkers: int, atoms, model, config: HoppingConfig):
        self.atoms, self.model, self.config = atoms, model, config
        self.pool = concurrent.futures.ThreadPoolExecutor(walkers, thread_name_prefix="so3krates-walker")

    def submit(self, task: ExcursionTask):
        return self.pool.submit(run_excursion, self.atoms, self.model, self.config, task)

    def submit_start(self):
        return self.pool.submit(_counted_start, self.atoms, self.model, self.config)

    @staticmethod
    def wait_any(futures, timeout: float):
        return concurrent.futures.wait(futures, timeout, concurrent.futures.FIRST_COMPLETED).done

    @staticmethod
    def result(future):
        return future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Dask:
    def __init__(self, scheduler: str, walkers: int, atoms, model, config: HoppingConfig):
        distributed = _import_distributed()
        self.distributed = distributed
        self.lost_errors = (distributed.KilledWorker, concurrent.futures.CancelledError, OSError, TimeoutError)
        # the model travels as numpy arrays: a worker sets up 64-bit types (as the driver has
        # them) before computing, and a float64 JAX array unpickled before that would turn float32
        self.atoms, self.model, self.config = atoms, jax.device_get(model), config
        self.x64 = bool(jax.config.jax_enable_x64)
        # the workers keep the model they were sent under this token: one object, one set of
        # compiled functions per worker, however many tasks carry it
        self.token = uuid.uuid4().hex
        self.client, self.cluster = dask_client(scheduler, walkers)

    def submit(self, task: ExcursionTask):
        return self.client.submit(_remote_excursion, self.token, self.x64, self.model, self.atoms, self.config, task,
                                  pure=False)

    def submit_start(self):
        return self.client.submit(_remote_start, self.token, self.x64, self.model, self.atoms, self.config, pure=False)

    def wait_any(self, futures, timeout: float):
        try:
            return self.distributed.wait(futures, timeout=timeout, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            return set()

    @staticmethod
    def result(future):
        return future.result()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def dask_client(scheduler: str, workers: int):
    """(client, cluster): a new LocalCluster on 127.0.0.1 for "local" (one single-threaded worker
    process per task up to the number of cores; close both), or a client of the scheduler at that
    address (cluster None)."""
    distributed = _import_distributed()
    if scheduler == "local":
        cluster = distributed.LocalCluster(
            n_workers=max(1, min(workers, os.cpu_count() or 1)), threads_per_worker=1, processes=True,
            host="127.0.0.1", dashboard_address=None, silence_logs=40)
        return distributed.Client(cluster), cluster
    try:
        return distributed.Client(scheduler, timeout="20s"), None
    except (OSError, TimeoutError) as error:
        raise ValueError(f"cannot reach the Dask scheduler at {scheduler!r}: {error}") from None


_WORKER_MODELS: dict[str, Any] = {}


def _worker_model(token: str, model):
    if token not in _WORKER_MODELS:
        if len(_WORKER_MODELS) >= 4:
            _WORKER_MODELS.pop(next(iter(_WORKER_MODELS)))
        _WORKER_MODELS[token] = model
    return _WORKER_MODELS[token]


def _worker_setup(x64: bool) -> None:
    """A worker process is set up like the driver (its float64 relaxations need 64-bit types)."""
    configure(x64=x64)


def _remote_excursion(token: str, x64: bool, model, atoms, config: HoppingConfig, task: ExcursionTask) -> Excursion:
    _worker_setup(x64)
    return run_excursion(atoms, _worker_model(token, model), config, task)


def _counted_start(atoms, model, config: HoppingConfig) -> tuple[np.ndarray, float, int]:
    """The walkers' first minimum, and how many programs relaxing it compiled."""
    (positions, energy), compilations = counted(relax_start, atoms, model, config)
    return positions, energy, compilations


def _remote_start(token: str, x64: bool, model, atoms, config: HoppingConfig) -> tuple[np.ndarray, float, int]:
    _worker_setup(x64)
    return _counted_start(atoms, _worker_model(token, model), config)
