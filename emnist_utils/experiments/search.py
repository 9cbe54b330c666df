"""Searching run specs with Optuna instead of choosing them by hand (notebook 08, `python -m emnist_utils search`).

Optuna does the searching (samplers, pruners, importances, storages); this module only says what is searched and
how a trial is scored. Every trial is a `RunSpec` trained through the results store, so it is cached under its key,
resumable, fingerprinted, and exactly what `python -m emnist_utils train` of that spec gives: re-running a finished
search trains nothing. A trial's score is the validation score of the model its trained-model file delivers
(balanced accuracy after the logit adjustment chosen on validation, when the test split is balanced); the test
split is never read here.

Compute, not trial count, is the budget: a trial costs the training images it processed (epochs actually trained
times the training part, plus validation passes) at the model's measured throughput on this machine (the plan's
calibration), in seconds. A pruned trial costs the epochs it trained.

Studies live in an Optuna storage: by default a journal file under the cache (several worker processes of one
machine share it), or any Optuna storage URL (PostgreSQL for many machines). With a database, each running trial
sends a heartbeat; a trial whose worker died is failed once its heartbeat is stale and queued again with the same
parameters (Optuna's RetryHeartbeatStaleTrialCallback, which replaced RetryFailedTrialCallback), so nothing is lost.
On the journal file, which has no heartbeat, a trial whose worker process on this machine is gone is failed and queued
again the same way.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from ..core.data import load_emnist
from ..core.paths import cache_dir, ensure_writable
from ..core.registry import ConfigError, ModelSpec
from ..core.splits import Splits, make_splits
from ..core.training import History, Recipe
from .beyond import LEAN, LEAN_RECIPE
from .plan import Calibration, estimate_seconds
from .profiles import Profile, get_profile
from .spec import RunSpec
from .store import RunResult, Store
from .trials import REPORT_FINAL, TABLE_1_2

HEARTBEAT_SECONDS = 10  # a database trial's worker proves it is alive this often ...
GRACE_SECONDS = 30  # ... and its trial is failed and retried this long after the last proof
MAX_RETRIES = 3
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


class SearchError(RuntimeError):
    """A search that cannot start or go on as asked; the message names the problem and the fix."""


# ----------------------------------------------------------------------------- what is searched


@dataclass(frozen=True)
class Space:
    """A search space: the run every trial starts from and the fields a trial changes ("recipe.lr", "model.c1"),
    each with an Optuna distribution. `objectives` names what a trial returns, in order."""

    name: str
    description: str
    base: RunSpec
    parameters: dict[str, BaseDistribution]
    objectives: tuple[str, ...] = ("balanced validation accuracy",)
    directions: tuple[str, ...] = ("maximize",)

    def suggest(self, trial: optuna.Trial) -> dict:
        params = {}
        for name, dist in self.parameters.items():
            if isinstance(dist, FloatDistribution):
                params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
            elif isinstance(dist, IntDistribution):
                params[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
            else:
                params[name] = trial.suggest_categorical(name, dist.choices)
        return params

    def spec(self, params: dict, epochs: int) -> RunSpec:
        """The run a trial with `params` trains (with the search's epochs); a value outside the space, or one the
        run refuses, is a SearchError naming the parameter."""
        model, recipe = self.base.model.as_dict(), self.base.recipe.as_dict()
        for name, value in params.items():
            if name not in self.parameters:
                raise SearchError(
                    f"search space {self.name!r} has no parameter {name!r}; it has {', '.join(self.parameters)}"
                )
            if not self.parameters[name]._contains(self.parameters[name].to_internal_repr(value)):
                raise SearchError(f"{name}={value!r} is outside search space {self.name!r} ({self.parameters[name]})")
            part, field_name = name.split(".", 1)
            (model if part == "model" else recipe)[field_name] = value
        recipe["epochs"] = epochs
        try:
            built = ModelSpec(**model), Recipe.from_dict(recipe)
        except (ConfigError, TypeError, ValueError) as exc:
            raise SearchError(f"search space {self.name!r}: {exc}") from exc
        return self.base.with_(model=built[0], recipe=built[1], name=f"{self.name}-search")


def _float(low, high, log=False, step=None) -> FloatDistribution:
    return FloatDistribution(low, high, log=log, step=step)


REPORT_SPACE = Space(
    "report",
    "Architecture 2 and the report's recipe; what Table 1.2 varied: learning rate, batch size, widths, dropout",
    REPORT_FINAL.with_(seed=0),
    {
        "recipe.lr": _float(1e-4, 1e-2, log=True),
        "recipe.batch_size": IntDistribution(32, 320, log=True),
        "model.c1": IntDistribution(8, 64, step=8),
        "model.c2": IntDistribution(16, 96, step=8),
        "model.hidden": IntDistribution(128, 640, step=4),
        "model.dropout": _float(0.0, 0.6),
    },
)

BEYOND_SPACE = Space(
    "beyond",
    "the lean CNN's recipe and shape, for accuracy against measured CPU training cost",
    RunSpec(LEAN, LEAN_RECIPE),
    {
        "recipe.lr": _float(1e-3, 1e-2, log=True),
        "recipe.weight_decay": _float(1e-5, 1e-2, log=True),
        "recipe.label_smoothing": _float(0.0, 0.2),
        "model.dropout": _float(0.0, 0.5),
        "model.c1": IntDistribution(16, 64, step=8),
        "model.c2": IntDistribution(32, 128, step=16),
        "model.hidden": IntDistribution(64, 256, step=32),
        "recipe.augment": CategoricalDistribution(("none", "affine", "affine+erasing")),
        "recipe.ema_decay": CategoricalDistribution((0.0, 0.99, 0.999)),
        "recipe.sampling": CategoricalDistribution(("none", "sqrt", "balanced")),
    },
    objectives=("balanced validation accuracy", "CPU training seconds"),
    directions=("maximize", "minimize"),
)

SPACES = {s.name: s for s in (REPORT_SPACE, BEYOND_SPACE)}
SAMPLERS = ("random", "tpe", "tpe-pruned")


def get_space(name: str) -> Space:
    if name not in SPACES:
        raise SearchError(f"unknown search space {name!r}; choose one of {', '.join(SPACES)}")
    return SPACES[name]


def hand_params(space: Space) -> list[dict]:
    """The report's seven hand-picked trials of Table 1.2 as parameters of the report space."""
    if space.name != "report":
        return []
    rows = []
    for t in TABLE_1_2:
        m, r = t.spec.model, t.spec.recipe
        rows.append(
            {
                "recipe.lr": r.lr,
                "recipe.batch_size": r.batch_size,
                "model.c1": m.c1,
                "model.c2": m.c2,
                "model.hidden": m.hidden,
                "model.dropout": m.dropout,
            }
        )
    return rows


# ----------------------------------------------------------------------------- fidelity and budget


@dataclass(frozen=True)
class Fidelity:
    """How much each trial trains under a profile: the same for the hand trials and every search arm."""

    train_limit: int | None
    epochs: dict[str, int]  # per space
    sampler_seeds: tuple[int, ...]
    hand_trials: int  # how many of Table 1.2's trials form the hand arm (all 7 but under smoke)
    beyond_trials: int

    def describe(self, space: Space, splits: Splits) -> str:
        return f"{self.epochs[space.name]} epoch(s) on {len(splits.train_labels):,} training images"


FIDELITY = {
    "smoke": Fidelity(None, {"report": 1, "beyond": 1}, (0,), 3, 4),
    "quick": Fidelity(3_000, {"report": 1, "beyond": 1}, (0,), 7, 8),
    "full": Fidelity(10_000, {"report": 4, "beyond": 6}, (0, 1, 2), 7, 40),
}


def fidelity(profile: Profile) -> Fidelity:
    return FIDELITY.get(profile.name, FIDELITY["smoke"])


def trial_compute(spec: RunSpec, epochs_trained: int, images_per_second: float, splits: Splits) -> float:
    """Seconds of this machine's compute a trial used: its trained epochs at the model's measured throughput."""
    return estimate_seconds(
        spec.with_(recipe=spec.recipe.with_(epochs=max(epochs_trained, 0))),
        images_per_second,
        len(splits.train_labels),
        len(splits.val_labels),
    )


# ----------------------------------------------------------------------------- storage


def journal_path(root: Path | None = None) -> Path:
    return (root or cache_dir()) / "search" / "studies.journal"


def redact(url: str) -> str:
    """A storage URL as messages show it: without its password."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{host}"


def open_storage(url: str | None = None, *, root: Path | None = None):
    """An Optuna storage: the journal file under the cache (None), or any Optuna storage URL. A database storage
    gets a heartbeat and retries the trials of workers that died. Connection problems are one SearchError."""
    if not url:
        path = journal_path(root)
        ensure_writable(path.parent, "search journal", "Set EMNIST_CACHE to a writable folder.")
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    try:
        return RDBStorage(
            url,
            engine_kwargs={"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else {},
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=retry_callback(),
        )
    except Exception as exc:  # sqlalchemy's and the driver's errors: one line with the cause
        raise SearchError(f"cannot use the study storage {redact(url)}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__


def open_study(
    name: str,
    storage,
    *,
    space: str | None = None,
    sampler: str = "tpe",
    seed: int = 0,
    create: bool = True,
    one_of_many: bool = False,
) -> optuna.Study:
    """Load study `name`, or create it for `space` with `sampler` (`random`, `tpe`, `tpe-pruned`). A study records
    its space, sampler and seed, so that every worker on every machine joining it searches the same way. A lone
    worker samples with the recorded seed and the number of trials the study already has (a search is repeatable, and
    one resumed after an interruption does not propose again what the first command proposed); `one_of_many` workers
    also mix in their own identity, so that they do not all propose the same trials."""
    try:
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    except Exception as exc:
        raise SearchError(f"cannot read studies from the storage: {_first_line(exc)}") from exc
    if name in existing:
        attrs = existing[name].user_attrs
        if space is not None and attrs.get("space") != space:
            raise SearchError(f"study {name!r} searches space {attrs.get('space')!r}, not {space!r}")
        space, sampler, seed = attrs["space"], attrs["sampler"], attrs["seed"]
        trials_before = existing[name].n_trials
    else:
        trials_before = 0
    if name not in existing and (space is None or not create):
        known = ", ".join(sorted(existing)) or "none"
        raise SearchError(
            f"no study named {name!r} in this storage (studies there: {known}); create it with --space NAME"
        )
    chosen = get_space(space)
    if one_of_many:
        sampler_seed = hash((seed, trials_before, worker_id())) % 2**31
    else:
        sampler_seed = hash((seed, trials_before)) % 2**31 if trials_before else seed
    if sampler not in SAMPLERS:
        raise SearchError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler == "tpe-pruned" and len(chosen.directions) > 1:
        raise SearchError("pruning needs one objective; the beyond space has two, use --sampler tpe or random")
    samplers = {
        "random": lambda: optuna.samplers.RandomSampler(seed=sampler_seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=5, constant_liar=True),
        "tpe-pruned": lambda: optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=5, constant_liar=True),
    }
    pruner = (
        optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
        if sampler == "tpe-pruned"
        else optuna.pruners.NopPruner()
    )
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=samplers[sampler](),
            pruner=pruner,
            directions=list(chosen.directions),
            load_if_exists=True,
        )
        if name not in existing:
            for key, value in (("space", space), ("sampler", sampler), ("seed", seed)):
                study.set_user_attr(key, value)
            study.set_metric_names(list(chosen.objectives))  # what optuna-dashboard calls the objectives
    except Exception as exc:
        raise SearchError(f"cannot open study {name!r}: {_first_line(exc)}") from exc
    return study


def study_space(study: optuna.Study) -> Space:
    return get_space(study.user_attrs["space"])


# ----------------------------------------------------------------------------- trials


@dataclass
class Objective:
    """Trains one trial's run through the store and returns its score(s); reports every epoch's validation score
    to the pruner. Compute is recorded on the trial (`compute_s`), pruned or not."""

    space: Space
    store: Store
    splits: Splits
    profile: Profile
    throughput: Callable[[RunSpec], float]  # measured training images per second of a run's model and recipe
    device: str | None = None
    limit: Callable[[], bool] = lambda: False  # True: this trial would exceed the study's total; fail it untrained

    def __call__(self, trial: optuna.Trial):
        if self.limit():
            trial.set_user_attr("surplus", True)
            raise SurplusTrial("the study already has its trials")
        trial.set_user_attr("worker", worker_id())
        params = self.space.suggest(trial)
        spec = self.space.spec(params, fidelity(self.profile).epochs[self.space.name])
        spec = spec.bind(self.splits, self.profile)
        trial.set_user_attr("key", spec.key())
        speed = self.throughput(spec)
        pruning = len(self.space.directions) == 1 and not isinstance(trial.study.pruner, optuna.pruners.NopPruner)

        def report(epoch: int, history: History) -> None:
            trial.set_user_attr("epochs_trained", epoch)
            trial.set_user_attr("compute_s", trial_compute(spec, epoch, speed, self.splits))
            if pruning:
                trial.report(history.val_balanced_acc[-1], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        reported = set()

        def report_once(epoch: int, history: History) -> None:
            reported.add(epoch)
            report(epoch, history)

        result = self.store.run(spec, self.splits, device=self.device, progress=False, callbacks=[report_once])
        epochs = result.history.epochs
        compute = trial_compute(spec, epochs, speed, self.splits)
        trial.set_user_attr("epochs_trained", epochs)
        trial.set_user_attr("compute_s", compute)
        if pruning:  # a cached run reports its epochs too, so that the pruner sees every trial alike
            for epoch, value in enumerate(result.history.val_balanced_acc, start=1):
                if epoch not in reported:
                    trial.report(value, epoch)
        score = delivered_score(result)
        return score if len(self.space.directions) == 1 else (score, compute)


class SurplusTrial(Exception):
    """A trial asked for after the study reached its total (workers racing for the last slot): failed, untrained."""


def delivered_score(result: RunResult) -> float:
    """The validation score of what the run's trained-model file delivers: after the logit adjustment validation
    chose, balanced accuracy when the test split is balanced (plain accuracy otherwise)."""
    m = result.metrics
    key = "val_balanced_acc_adjusted" if m.get("selection_metric") == "balanced" else "val_acc_adjusted"
    return float(m[key])


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Optuna's retry of a dead worker's trial (same parameters, queued again), at most MAX_RETRIES times. It
    replaced RetryFailedTrialCallback in Optuna 4.9 and is marked experimental (silenced with the others above)."""
    return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def requeue_dead_local_workers(study: optuna.Study) -> int:
    """Fail the running trials whose worker process on this machine is gone, and queue them again with the same
    parameters (what the heartbeat does on a database; a journal file has none). Returns how many."""
    host, count = socket.gethostname(), 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        if not worker.startswith(host + ":"):
            continue
        pid = int(worker.rsplit(":", 1)[1])
        if _alive(pid):
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except Exception:  # another worker failed it first
            continue
        retry_callback()(study, study._storage.get_trial(trial._trial_id))
        count += 1
    return count


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def optimise(
    study: optuna.Study,
    objective: Objective,
    n_trials: int,
    *,
    budget: float | None = None,
    poll_seconds: float = 1.0,
) -> None:
    """Run trials until the study has `n_trials` finished (complete or pruned) ones, or, with `budget`, until the
    compute of its finished trials reaches it. Safe for many workers on one study: a worker starts a trial only
    while finished + running trials are fewer than the total, waits while the others finish the last ones, and
    fails (untrained) a trial that a race made one too many."""

    def spent() -> float:
        return sum(t.user_attrs.get("compute_s", 0.0) for t in study.get_trials(deepcopy=False, states=FINISHED))

    def enough() -> bool:
        return finished_count(study) >= n_trials or (budget is not None and spent() >= budget)

    def surplus() -> bool:
        active = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        return len(active) > n_trials or (budget is not None and spent() >= budget)

    objective.limit = surplus
    heartbeat = is_heartbeat_enabled(study._storage)  # a database: a dead worker's trial is failed when it goes stale
    while not enough():
        if heartbeat:
            # Optuna only looks for stale trials when it starts one; a worker waiting for the last trials looks too,
            # or a trial of a worker that died on another machine would keep every other worker waiting for ever.
            optuna.storages.fail_stale_trials(study)
        else:
            requeue_dead_local_workers(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        active = sum(s in FINISHED or s == TrialState.RUNNING for s in states)
        if active >= n_trials and TrialState.WAITING not in states:
            time.sleep(poll_seconds)  # the last trials are running elsewhere; a dead worker's come back as WAITING
            continue
        study.optimize(objective, n_trials=1, catch=(SurplusTrial,), gc_after_trial=False)


# ----------------------------------------------------------------------------- results


@dataclass
class ArmCurve:
    """Best validation so far against compute spent, for one arm and sampler seed."""

    arm: str
    seed: int
    compute: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)

    def best_at(self, compute: float) -> float:
        """The best score reached with at most `compute` seconds (NaN before the first trial finished)."""
        value = math.nan
        for c, b in zip(self.compute, self.best):
            if c <= compute + 1e-9:
                value = b
        return value

    def first_reaching(self, score: float) -> float:
        """Compute at which the arm first matched `score` (inf if never)."""
        for c, b in zip(self.compute, self.best):
            if b >= score - 1e-9:
                return c
        return math.inf


def curve(arm: str, seed: int, trials: Sequence[tuple[float, float | None]]) -> ArmCurve:
    """An arm's curve from (compute, score or None for pruned) in the order the trials finished."""
    out, spent, best = ArmCurve(arm, seed), 0.0, -math.inf
    for compute, score in trials:
        spent += compute
        if score is not None:
            best = max(best, score)
        if best > -math.inf:
            out.compute.append(spent)
            out.best.append(best)
    return out


def study_curve(study: optuna.Study, arm: str, seed: int) -> ArmCurve:
    trials = sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.datetime_complete)
    return curve(
        arm,
        seed,
        [(t.user_attrs.get("compute_s", 0.0), t.values[0] if t.state == TrialState.COMPLETE else None) for t in trials],
    )


def trials_frame(study: optuna.Study):
    """Every finished trial of a study as a table: number, state, parameters, score(s), epochs and compute."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        row = {"trial": t.number, "state": t.state.name.lower()}
        row.update({k.split(".", 1)[1]: v for k, v in t.params.items()})
        if t.values is not None:
            row["val_balanced_acc"] = round(t.values[0], 2)
            if len(t.values) > 1:
                row["cpu_train_s"] = round(t.values[1], 1)
        row["epochs"] = t.user_attrs.get("epochs_trained")
        row["compute_s"] = round(t.user_attrs.get("compute_s", 0.0), 1)
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- workers (the command line)


def parse_assignments(text: str, space: Space) -> dict:
    """`recipe.lr=0.001,model.c1=16` as parameters of `space`, each value of its distribution's type."""
    params = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in item:
            raise SearchError(f"expected NAME=VALUE in {item!r} (e.g. recipe.lr=0.001)")
        name, raw = (x.strip() for x in item.split("=", 1))
        dist = space.parameters.get(name)
        if dist is None:
            raise SearchError(
                f"search space {space.name!r} has no parameter {name!r}; it has {', '.join(space.parameters)}"
            )
        try:
            if isinstance(dist, IntDistribution):
                value = int(raw)
            elif isinstance(dist, FloatDistribution):
                value = float(raw)
            else:
                value = next(c for c in dist.choices if str(c) == raw)
        except (ValueError, StopIteration):
            raise SearchError(f"{name}={raw!r} is not a value of search space {space.name!r} ({dist})") from None
        params[name] = value
    space.spec({**params}, 1)  # refuses values outside the space, naming them
    return params


@dataclass(frozen=True)
class WorkerArgs:
    study: str
    storage: str | None
    n_trials: int
    one_of_many: bool
    data_root: str
    split: str
    profile: str
    device: str | None
    threads: int
    cache: str


def work(args: WorkerArgs) -> int:
    """One worker: join the study and run trials until it has its total. Returns the trials this worker finished."""
    torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    storage = open_storage(args.storage, root=Path(args.cache))
    study = open_study(args.study, storage, create=False, one_of_many=args.one_of_many)
    space = study_space(study)
    data = load_emnist(args.data_root, args.split, download=False)
    splits = search_splits(data, profile)
    store = Store(Path(args.cache))
    calibration = Calibration(store.root / "calibration.json", torch.device(args.device or "cpu"), args.threads)
    objective = Objective(
        space,
        store,
        splits,
        profile,
        lambda spec: calibration.throughputs([spec], splits.num_classes)[spec.key()],
        device=args.device,
    )
    before = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
    optimise(study, objective, args.n_trials)
    mine = [
        t
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if t.number not in before and t.user_attrs.get("worker") == worker_id()
    ]
    return len(mine)


def search_splits(data, profile: Profile) -> Splits:
    """The splits every trial of a profile's search trains and validates on (the search's training subset)."""
    limit = fidelity(profile).train_limit
    train = min(x for x in (limit, profile.train_limit) if x is not None) if (limit or profile.train_limit) else None
    return make_splits(data, 0, train_limit=train, val_limit=profile.val_limit)


def _work_in_process(args: WorkerArgs, queue) -> None:
    try:
        queue.put(("done", work(args)))
    except SearchError as exc:
        queue.put(("error", str(exc)))


def run_workers(args: WorkerArgs, jobs: int) -> list[int]:
    """`jobs` worker processes on one study (one runs here when jobs is 1); each returns its finished trials."""
    if jobs <= 1:
        return [work(args)]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_work_in_process, args=(args, queue)) for _ in range(jobs)]
    for p in processes:
        p.start()
    results, errors = [], []
    for p in processes:
        p.join()
    while not queue.empty():
        kind, value = queue.get()
        (results if kind == "done" else errors).append(value)
    if errors:
        raise SearchError(errors[0])
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise SearchError(
            f"{len(failed)} worker process(es) stopped with exit code {failed[0]}; run the command again to resume"
        )
    return results
