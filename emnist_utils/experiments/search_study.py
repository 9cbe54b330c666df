"""Notebook 08's studies: the report's hand trials against search arms at equal compute, the accuracy/cost study of
the lean CNN, parameter importances, and the winner. The searching itself is Optuna's (see search.py)."""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from ..core.reporting import read_stamped_table
from ..core.splits import Splits, make_splits
from .beyond import CANDIDATES, LEAN_RECIPE
from .profiles import Profile
from .search import (
    BEYOND_SPACE,
    REPORT_SPACE,
    ArmCurve,
    Objective,
    Space,
    curve,
    delivered_score,
    fidelity,
    hand_params,
    open_study,
    optimise,
    search_splits,
    study_curve,
    trial_compute,
)
from .spec import RunSpec
from .store import RunResult, Store
from .studies import SEEDS

ARMS = ("random", "tpe", "tpe-pruned")
MAX_ARM_TRIALS = 200  # an arm stops at its compute budget long before this


def study_name(space: Space, arm: str, seed: int, splits: Splits, profile: Profile) -> str:
    """A study per arm, seed, data and fidelity, so that another profile or data never joins an old study."""
    ident = f"{splits.provenance['checksum']}|{len(splits.train_labels)}|{fidelity(profile).epochs[space.name]}"
    return f"{space.name}-{arm}-seed{seed}-{profile.name}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


@dataclass
class SearchSetup:
    """What every arm shares: the store, the search's splits, the profile, measured throughput, the storage."""

    store: Store
    splits: Splits
    profile: Profile
    throughput: Callable[[RunSpec], float]
    storage: object
    device: str | None = None

    def objective(self, space: Space) -> Objective:
        return Objective(space, self.store, self.splits, self.profile, self.throughput, device=self.device)


def hand_arm(setup: SearchSetup) -> tuple[ArmCurve, list[RunResult], list[float]]:
    """The report's Table 1.2 trials, in the report's order, at the search's fidelity: its curve, results and the
    compute of each."""
    space, fid = REPORT_SPACE, fidelity(setup.profile)
    results, computes = [], []
    for params in hand_params(space)[: fid.hand_trials]:
        spec = space.spec(params, fid.epochs[space.name]).bind(setup.splits, setup.profile)
        result = setup.store.run(spec, setup.splits, device=setup.device, progress=False)
        results.append(result)
        computes.append(trial_compute(spec, result.history.epochs, setup.throughput(spec), setup.splits))
    return curve("hand", 0, [(c, delivered_score(r)) for c, r in zip(computes, results)]), results, computes


def search_arm(setup: SearchSetup, arm: str, seed: int, budget: float) -> tuple[ArmCurve, optuna.Study]:
    """One search arm with one sampler seed, run until its finished trials used `budget` seconds of compute."""
    name = study_name(REPORT_SPACE, arm, seed, setup.splits, setup.profile)
    # each arm its own stream of random numbers: seeded alike, random search and TPE's random start would propose
    # the very same first trials
    study = open_study(name, setup.storage, space="report", sampler=arm, seed=1000 * ARMS.index(arm) + seed)
    optimise(study, setup.objective(REPORT_SPACE), MAX_ARM_TRIALS, budget=budget)
    return study_curve(study, arm, seed), study


def arm_table(curves: Sequence[ArmCurve], hand: ArmCurve, budget: float) -> pd.DataFrame:
    """Per arm: best validation at the hand trials' compute (mean and spread over sampler seeds), and the compute
    at which each arm first matched the hand trials' best."""
    target = hand.best[-1]
    rows = [
        {
            "arm": "hand (Table 1.2)",
            "seeds": 1,
            "best_val_at_budget": round(target, 2),
            "spread": 0.0,
            "compute_to_match_hand_s": round(hand.first_reaching(target), 1),
            "matched_in_seeds": "1/1",
        }
    ]
    for arm in ARMS:
        mine = [c for c in curves if c.arm == arm]
        if not mine:
            continue
        best = [c.best_at(budget) for c in mine]
        reach = [c.first_reaching(target) for c in mine]
        finite = [r for r in reach if math.isfinite(r)]
        rows.append(
            {
                "arm": arm,
                "seeds": len(mine),
                "best_val_at_budget": round(statistics.fmean(best), 2),
                "spread": round(statistics.stdev(best), 2) if len(best) > 1 else 0.0,
                "compute_to_match_hand_s": round(statistics.fmean(finite), 1) if finite else math.inf,
                "matched_in_seeds": f"{len(finite)}/{len(mine)}",
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- accuracy against cost


def candidate_params() -> list[dict]:
    """Notebook 05's hand-picked lean candidates as parameters of the beyond space (its recipe, their widths)."""
    out = []
    for spec in CANDIDATES:
        if spec.model.arch != "lean":
            continue
        out.append(
            {
                "recipe.lr": LEAN_RECIPE.lr,
                "recipe.weight_decay": LEAN_RECIPE.weight_decay,
                "recipe.label_smoothing": LEAN_RECIPE.label_smoothing,
                "model.dropout": spec.model.dropout,
                "model.c1": spec.model.c1,
                "model.c2": spec.model.c2,
                "model.hidden": spec.model.hidden,
                "recipe.augment": LEAN_RECIPE.augment,
                "recipe.ema_decay": LEAN_RECIPE.ema_decay,
                "recipe.sampling": LEAN_RECIPE.sampling,
            }
        )
    return out


def beyond_study(setup: SearchSetup, seed: int = 0) -> optuna.Study:
    """The multi-objective study (validation up, CPU training seconds down); notebook 05's candidates are its first
    trials, so that they are measured at the same fidelity as everything the search proposes."""
    name = study_name(BEYOND_SPACE, "tpe", seed, setup.splits, setup.profile)
    study = open_study(name, setup.storage, space="beyond", sampler="tpe", seed=seed)
    if not study.trials:
        for params in candidate_params():
            study.enqueue_trial(params)
    optimise(study, setup.objective(BEYOND_SPACE), fidelity(setup.profile).beyond_trials)
    return study


def finished_beyond_study(setup: SearchSetup, seed: int = 0) -> optuna.Study | None:
    """The accuracy/cost study notebook 08 ran under this profile and data, if it has all its trials; else None
    (nothing is searched here)."""
    name = study_name(BEYOND_SPACE, "tpe", seed, setup.splits, setup.profile)
    try:
        study = optuna.load_study(study_name=name, storage=setup.storage)
    except KeyError:
        return None
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study if len(done) >= fidelity(setup.profile).beyond_trials else None


def beyond_table(study: optuna.Study) -> pd.DataFrame:
    """Every complete trial: its shape, validation score, CPU cost, parameters, whether it is a hand-picked candidate
    and whether it is on the Pareto front."""
    front = {t.number for t in study.best_trials}
    n_candidates = len(candidate_params())
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        p = t.params
        rows.append(
            {
                "trial": t.number,
                "source": "notebook 05 candidate" if t.number < n_candidates else "search",
                "widths": f"{p['model.c1']}/{p['model.c2']}/{p['model.hidden']}",
                "val_balanced_acc": round(t.values[0], 2),
                "cpu_train_s": round(t.values[1], 1),
                "pareto": t.number in front,
                **{k.split(".", 1)[1]: (round(v, 5) if isinstance(v, float) else v) for k, v in p.items()},
            }
        )
    return pd.DataFrame(rows).sort_values("cpu_train_s").reset_index(drop=True)


def smallest_near_best(table: pd.DataFrame, within: float = 0.3) -> pd.Series:
    """The cheapest trial (CPU training seconds) within `within` points of the best validation score."""
    best = table["val_balanced_acc"].max()
    near = table[table["val_balanced_acc"] >= best - within]
    return near.sort_values(["cpu_train_s", "trial"]).iloc[0]


def importances(study: optuna.Study, target_index: int = 0) -> pd.Series:
    """Optuna's fANOVA importance of each parameter for the (first) objective, largest first."""
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    values = optuna.importance.get_param_importances(
        study, evaluator=evaluator, target=lambda t: t.values[target_index], normalize=True
    )
    return pd.Series({k.split(".", 1)[1]: v for k, v in values.items()}, name="importance")


def pooled_study(studies: Sequence[optuna.Study], name: str = "pooled") -> optuna.Study:
    """The finished trials of several studies of one space in one in-memory study (for importances over all arms)."""
    pooled = optuna.create_study(study_name=name, directions=studies[0].directions)
    for s in studies:
        for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            pooled.add_trial(t)
    return pooled


def winner_spec(study: optuna.Study) -> RunSpec:
    """The beyond study's best trial by validation (the first objective), as an (unbound) run with the lean recipe's
    full epochs: what is trained with three seeds and tested once."""
    best = max(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: (t.values[0], -t.number))
    spec = BEYOND_SPACE.spec(best.params, LEAN_RECIPE.epochs)
    return spec.with_(name=f"search-winner-trial{best.number}")


@dataclass(frozen=True)
class Committed05:
    """Notebook 05's choice as its committed tables give it: seed 0's validation score (results/beyond_candidates.csv)
    and the test mean and spread of its seeds (results/beyond_test.csv)."""

    name: str
    parameters: int
    val_seed0: float
    test_seeds: int
    test_mean: float
    test_spread: float | None


def committed_choice_05(results_dir: Path, provenance: dict, profile: str) -> Committed05 | None:
    """Notebook 05's choice from its committed tables, when they were made on the same data under the same profile;
    else None. Notebook 05's runs take hours on a CPU, so a machine whose cache lacks them still compares the winner
    with numbers that nothing on that machine can have changed. The tables name the choice among CANDIDATES."""
    stamp = {"provenance": provenance, "profile": profile}
    candidates = read_stamped_table("beyond_candidates", results_dir, **stamp)
    tested = read_stamped_table("beyond_test", results_dir, **stamp)
    if candidates is None or tested is None:
        return None
    chosen = tested[tested["model"].isin({c.name for c in CANDIDATES})]
    if len(chosen) != 1:
        return None
    t = chosen.iloc[0]
    c = candidates[candidates["label"] == t["model"]]
    if len(c) != 1:
        return None
    balanced_is_plain = math.isclose(t["test_acc_mean_%"], t["test_balanced_acc_mean_%"], abs_tol=0.005)
    return Committed05(
        name=str(t["model"]),
        parameters=int(t["parameters_per_model"]),
        val_seed0=float(c.iloc[0]["val_balanced_acc_adjusted_%"]),
        test_seeds=int(t["seeds"]),
        test_mean=float(t["test_balanced_acc_mean_%"]),
        # the table's spread is of plain accuracy: it is the balanced one's only where both are the same numbers
        test_spread=float(t["test_acc_std"]) if balanced_is_plain else None,
    )


def _spread(values: Sequence[float]) -> float | None:
    return round(statistics.stdev(values), 2) if len(values) > 1 else None


def winner_table(
    winner: Sequence[RunResult],
    tests: Sequence[float],
    chosen05: Sequence[RunResult],
    committed05: Committed05 | None = None,
) -> pd.DataFrame:
    """The winner's seeds (validation mean and spread; the test mean and spread, read once) beside notebook 05's
    choice: its validation from its runs in this cache, else seed 0's from its committed table; its test numbers
    only from notebook 05's committed table (this notebook never tests it)."""
    scores = [delivered_score(r) for r in winner]
    rows = [
        {
            "model": winner[0].spec.name,
            "parameters": winner[0].parameters,
            "val_seeds": len(scores),
            "val_balanced_mean": round(statistics.fmean(scores), 2),
            "val_spread": _spread(scores),
            "test_seeds": len(tests),
            "test_balanced_mean": round(statistics.fmean(tests), 2),
            "test_spread": _spread(tests),
            "numbers_from": "this notebook",
        }
    ]
    if chosen05 or committed05 is not None:
        scores05 = [delivered_score(r) for r in chosen05] or [committed05.val_seed0]
        name = chosen05[0].spec.name if chosen05 else committed05.name
        test_known = committed05 is not None and committed05.name == name
        sources = ["this cache"] if chosen05 else []
        if test_known:
            sources.append("results/beyond_test.csv" if chosen05 else "results/beyond_candidates.csv, beyond_test.csv")
        rows.append(
            {
                "model": f"notebook 05's choice ({name})",
                "parameters": chosen05[0].parameters if chosen05 else committed05.parameters,
                "val_seeds": len(scores05),
                "val_balanced_mean": round(statistics.fmean(scores05), 2),
                "val_spread": _spread(scores05),
                "test_seeds": committed05.test_seeds if test_known else None,
                "test_balanced_mean": committed05.test_mean if test_known else None,
                "test_spread": committed05.test_spread if test_known else None,
                "numbers_from": " + ".join(sources),
            }
        )
    return pd.DataFrame(rows)


def replaces_notebook_05(
    winner: Sequence[RunResult], chosen05: Sequence[RunResult], committed_val: float | None = None
) -> bool:
    """Whether the search's winner becomes results/best_model.pt: only if its validation mean (what the
    trained-model files deliver) is higher than that of notebook 05's choice, from its runs in this cache, else from
    its committed seed-0 score (`committed_val`). Decided on validation alone, so the test numbers both notebooks
    print cannot have chosen the delivered model."""
    reference = statistics.fmean(map(delivered_score, chosen05)) if chosen05 else committed_val
    if not winner or reference is None:
        return False
    return statistics.fmean(map(delivered_score, winner)) > reference


@dataclass(frozen=True)
class CommittedVerdict:
    """Notebook 08's comparison as its committed table gives it: the winner's validation mean beside notebook 05's
    choice's (results/search_winner.csv)."""

    winner: str
    winner_val: float
    chosen05: str
    chosen05_val: float

    @property
    def replaces_notebook_05(self) -> bool:
        return self.winner_val > self.chosen05_val


def committed_verdict(results_dir: Path, provenance: dict, profile: str) -> CommittedVerdict | None:
    """Notebook 08's verdict from its committed table, when it was made on the same data under the same profile;
    else None. The search's study lives in a cache (hours of trials on a CPU): a machine without it can still follow
    the decision the search made on validation, and nothing on that machine can have changed it."""
    table = read_stamped_table("search_winner", results_dir, provenance=provenance, profile=profile)
    if table is None or len(table) != 2 or table["val_balanced_mean"].isna().any():
        return None
    winner, chosen05 = table.iloc[0], table.iloc[1]
    return CommittedVerdict(
        str(winner["model"]), float(winner["val_balanced_mean"]), str(chosen05["model"]),
        float(chosen05["val_balanced_mean"]),
    )  # fmt: skip


# ----------------------------------------------------------------------------- what it costs (the main job's plan)

NOTEBOOK = "08_searching_instead_of_hand_tuning"
WINNER = "the winner's seeds"  # trained like notebook 05's candidates (full recipe), after the search


def estimated_seconds(profile: Profile, data, throughput: Callable[[RunSpec], float]) -> dict[str, float]:
    """Seconds of one process's training that notebook 08 needs under `profile`, from measured throughput: the
    hand arm; every search arm at the hand arm's compute (a last trial may overshoot it a little); the accuracy/cost
    study at the base lean CNN's cost per trial (its trials vary around it); the winner's seeds in full (at the
    base lean CNN's cost: the winner is only known after the study)."""
    fid = fidelity(profile)
    splits = search_splits(data, profile)
    hand = 0.0
    for params in hand_params(REPORT_SPACE)[: fid.hand_trials]:
        spec = REPORT_SPACE.spec(params, fid.epochs["report"]).bind(splits, profile)
        hand += trial_compute(spec, spec.recipe.epochs, throughput(spec), splits)
    base = BEYOND_SPACE.spec({}, fid.epochs["beyond"]).bind(splits, profile)
    per_trial = trial_compute(base, base.recipe.epochs, throughput(base), splits)
    full_splits = make_splits(data, 0, **profile.limits())
    winner = BEYOND_SPACE.spec({}, LEAN_RECIPE.epochs).bind(full_splits, profile)
    seeds = len(profile.seeds(SEEDS))
    return {
        "hand arm": hand,
        "search arms": hand * len(ARMS) * len(fid.sampler_seeds),
        "accuracy/cost study": per_trial * fid.beyond_trials,
        WINNER: seeds * trial_compute(winner, winner.recipe.epochs, throughput(winner), full_splits),
    }
