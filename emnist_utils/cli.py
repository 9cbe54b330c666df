"""The one command line: `python -m emnist_utils <command>`; every command is a `main(argv)` away from a test.

Commands: data, train, evaluate, trials, studies, notebooks, search (and predict). They share one parser for the data
(--data, --split), the profile, the device and the number of runs at once (--jobs). Errors the user can fix
(bad data, bad settings, an unusable model file, a folder that cannot be written) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import torch

from .core.data import DataError, load_emnist
from .core.evaluation import report
from .core.paths import OutputError, resolve, shown
from .core.recognition import recognise_files
from .core.registry import ConfigError
from .core.splits import make_splits
from .core.trained_model import ModelFileError, TrainedModel
from .core.training import available_device
from .experiments import beyond
from .experiments.profiles import PROFILES, get_profile
from .experiments.recipes import NAMED_RUNS
from .experiments.runner import Runner, parse_jobs
from .experiments.search import (
    SAMPLERS,
    SPACES,
    SearchError,
    WorkerArgs,
    finished_count,
    open_storage,
    open_study,
    parse_assignments,
    redact,
    run_workers,
    study_space,
)
from .experiments.store import Store
from .experiments.studies import COMPARISON_STUDIES, unique_specs
from .experiments.trials import TABLES
from .main_job import NotebookError, run_main_job

PROG = "python -m emnist_utils"
STUDIES = {
    **{s.name: s.specs for s in (*COMPARISON_STUDIES, beyond.LEAN_DROPOUT_STUDY)},
    "beyond": beyond.specs,
}


def _common() -> argparse.ArgumentParser:
    """The options every command shares."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("data, profile and machine")
    group.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="folder holding the emnist-<split>-* files (default: EMNIST_DATA, else data/)",
    )
    group.add_argument(
        "--split",
        default=None,
        metavar="NAME",
        help="EMNIST split: balanced, byclass, bymerge, letters, digits, mnist, or a custom name "
        "(default: EMNIST_SPLIT, else the one split present in --data, else balanced)",
    )
    group.add_argument(
        "--profile",
        default=None,
        choices=sorted(PROFILES),
        help="how much work: full (default, or EMNIST_PROFILE), quick (a laptop's half hour) or smoke (CI)",
    )
    group.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="cpu, cuda, cuda:N or mps (default: EMNIST_DEVICE, else the fastest present)",
    )
    group.add_argument(
        "--jobs",
        default="1",
        metavar="N",
        help="runs trained at once, each in its own process: a number or 'auto' (one per core on "
        "a CPU, four sharing a GPU); default 1",
    )
    group.add_argument(
        "--allow-unverified",
        action="store_true",
        help="accept data files that no official hash or SHA256SUMS vouches for",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    common = _common()

    data = commands.add_parser(
        "data",
        parents=[common],
        help="get (when needed) and verify a split, describe it",
        description="Download the split when it is an official one and missing, verify "
        "every file, and print what was loaded.",
    )
    data.set_defaults(func=cmd_data)

    train = commands.add_parser(
        "train",
        parents=[common],
        help="train a named recipe, test it once, save it",
        description="Train a named run (cached and resumable like the notebooks'), "
        "report its validation and test accuracy, and write its trained-model "
        "file.",
    )
    train.add_argument(
        "--recipe",
        choices=sorted(NAMED_RUNS),
        default="cpu",
        help=f"report (the report's final run, {NAMED_RUNS['report'].recipe.epochs} epochs), fast (the report's "
        f"model, {NAMED_RUNS['fast'].recipe.epochs} epochs), cpu (lean CNN, {NAMED_RUNS['cpu'].recipe.epochs} epochs, "
        "under 20 minutes on 2 CPU cores) or best (notebook 05's final recipe, "
        f"{NAMED_RUNS['best'].recipe.epochs} epochs); default cpu",
    )
    train.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    train.add_argument("--out", default=None, metavar="FILE", help="trained-model file to write (default: none)")
    train.add_argument("--retrain", action="store_true", help="train again even if the run is cached")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        parents=[common],
        help="test accuracy of a trained-model file",
        description="Test accuracy of a trained-model file on any EMNIST-format split, "
        "with what the file applies at prediction time.",
    )
    evaluate.add_argument(
        "--weights",
        required=True,
        metavar="FILE",
        help="a trained-model file (results/best_model.pt, results/final_model.pt, ...)",
    )
    evaluate.add_argument(
        "--allow-code-change",
        action="store_true",
        help="load the file even if its architecture's code changed since it was saved",
    )
    evaluate.add_argument("--json", action="store_true", help="print the numbers as JSON")
    evaluate.set_defaults(func=cmd_evaluate)

    trials = commands.add_parser(
        "trials",
        parents=[common],
        help="train the report's trial tables into the cache",
        description="Train the trials of the report's Tables 1.1 and 1.2 into the cache the notebooks read.",
    )
    trials.add_argument(
        "--tables", nargs="+", choices=sorted(TABLES), default=sorted(TABLES), help="which tables (default: both)"
    )
    trials.add_argument("--trials", nargs="+", type=int, metavar="N", help="only these trial numbers (1-7)")
    trials.set_defaults(func=cmd_trials)

    studies = commands.add_parser(
        "studies",
        parents=[common],
        help="train the studies of notebooks 05 and 06",
        description="Train the studies of notebooks 05 (beyond) and 06 into the cache the notebooks read.",
    )
    studies.add_argument(
        "--studies", nargs="+", choices=sorted(STUDIES), default=sorted(STUDIES), help="which studies (default: all)"
    )
    studies.set_defaults(func=cmd_studies)

    notebooks = commands.add_parser(
        "notebooks",
        parents=[common],
        help="the main job: plan, train, execute",
        description="Plan every run the notebooks need (with measured time estimates), "
        "train them, then execute the notebooks. The full profile executes "
        "the committed notebooks in place; other profiles execute copies "
        "under outputs/<profile>/notebooks/.",
    )
    notebooks.add_argument(
        "names",
        nargs="*",
        metavar="NOTEBOOK",
        help="only these notebooks (file name or number prefix, e.g. 03); default: all",
    )
    notebooks.add_argument("--plan", action="store_true", help="print the plan and stop")
    notebooks.add_argument(
        "--timeout", type=int, default=None, metavar="SECONDS", help="per-cell time limit (default: none)"
    )
    notebooks.set_defaults(func=cmd_notebooks)

    search = commands.add_parser(
        "search",
        parents=[common],
        help="search run specs with Optuna (one study, many workers and machines)",
        description="Join Optuna study NAME (creating it with --space) and run trials until it has N finished "
        "(complete or pruned) trials in all; every worker on every machine given the same --storage stops then. "
        "Each trial is a run trained through the results cache. Run the same command again to resume. Watch a "
        "study live with `optuna-dashboard URL` (for the default journal file: "
        "`optuna-dashboard .cache/search/studies.journal`).",
    )
    search.add_argument("--study", required=True, metavar="NAME", help="the study's name")
    search.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="an Optuna storage URL, e.g. postgresql://user:password@host/db for many machines (default: a "
        "journal file under the cache, shared by this machine's workers)",
    )
    search.add_argument("--trials", type=int, required=True, metavar="N", help="finished trials the study needs")
    search.add_argument(
        "--space",
        default=None,
        help=f"search space of a new study: {', '.join(SPACES)} (an existing study keeps its own)",
    )
    search.add_argument("--sampler", default="tpe", help=f"sampler of a new study: {', '.join(SAMPLERS)} (default tpe)")
    search.add_argument("--sampler-seed", type=int, default=0, help="sampler seed of a new study (default 0)")
    search.add_argument(
        "--enqueue",
        action="append",
        default=[],
        metavar="NAME=VALUE,...",
        help="a trial to run first, e.g. recipe.lr=0.001,model.c1=16 (other parameters sampled)",
    )
    search.set_defaults(func=cmd_search)

    predict = commands.add_parser(
        "predict",
        parents=[common],
        help="read your own handwriting: PNG/JPEG of one character each",
        description="Convert each picture (photo, scan or drawing of one handwritten "
        "character, dark ink on light or light on dark) the way EMNIST "
        "converted its scans, and print the model's most likely classes. "
        "A picture that cannot be read is reported and the others are still "
        "predicted; the exit code is 1 if any picture failed. Runs on the "
        "CPU unless --device (or EMNIST_DEVICE) says otherwise.",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="picture files, one character each")
    predict.add_argument(
        "--weights",
        default="results/best_model.pt",
        metavar="FILE",
        help="trained-model file (default: results/best_model.pt, written by notebook 05)",
    )
    predict.add_argument(
        "--top",
        type=int,
        default=5,
        metavar="K",
        help="how many of the most likely classes to print per picture (default 5)",
    )
    predict.add_argument(
        "--json",
        action="store_true",
        help='print a JSON list of {"image": PATH, "top": [[CHAR, PROB], ...]} (and "error" for '
        "a picture that could not be read)",
    )
    predict.add_argument(
        "--allow-code-change",
        action="store_true",
        help="load the file even if its architecture's code changed since it was saved",
    )
    predict.set_defaults(func=cmd_predict)
    return parser


# ----------------------------------------------------------------------------- commands


def _data(args):
    return load_emnist(args.data, args.split, allow_unverified=args.allow_unverified or None)


def _machine(args) -> tuple[torch.device, int]:
    device = available_device(args.device)
    return device, parse_jobs(args.jobs, device)


def cmd_data(args) -> int:
    print(_data(args).describe())
    return 0


def cmd_train(args) -> int:
    profile = get_profile(args.profile)
    data = _data(args)
    device = available_device(args.device)
    splits = make_splits(data, 0, **profile.limits())
    spec = NAMED_RUNS[args.recipe].with_(seed=args.seed).bind(splits, profile)
    store = Store()
    result = store.run(spec, splits, device=device, retrain=args.retrain)
    # The delivered model applies what validation chose: the logit adjustment (zero on a balanced training split)
    # and test-time shifts where they help; the test split is read once, for this model.
    model, chosen = beyond.with_chosen_prediction(result, splits)
    test = report(model.predict(splits.test_images, device=device), splits.test_labels, splits.classes)
    print(
        f"recipe {args.recipe}: {result.history.epochs} epochs, {result.parameters:,} parameters, trained in "
        f"{result.train_seconds:.0f} s on {result.device} (cached runs are not retrained)"
    )
    print(f"data: emnist-{data.split} sha256 {data.short_checksum}, profile {profile.name}, seed {args.seed}")
    print(
        f"chosen on validation: logit adjustment strength {chosen['adjustment_strength']:g}, test-time shifts "
        f"{'on' if chosen['tta'] else 'off'}"
    )
    print(
        f"validation accuracy {result.val_acc:.2f}% (balanced {result.val_balanced_acc:.2f}%; with the chosen "
        f"prediction settings, {'balanced ' if splits.test_is_balanced else ''}"
        f"{chosen['adjusted_tta'] if chosen['tta'] else chosen['adjusted']:.2f}%)"
    )
    print(f"test accuracy {test['accuracy']:.2f}% (balanced {test['balanced_accuracy']:.2f}%)")
    if args.out:
        out = resolve(args.out)
        saved = model.with_prediction()
        saved.metrics = {**model.metrics, "test_acc": test["accuracy"], "profile": profile.name}
        saved.save(out)
        print(f"trained-model file written to {shown(out)}")
    return 0


def cmd_evaluate(args) -> int:
    model = TrainedModel.load(resolve(args.weights), allow_code_change=args.allow_code_change)
    data = _data(args)
    model.check_classes(data.classes, f"emnist-{data.split}")
    device = available_device(args.device)
    result = report(model.predict(data.test_images, device=device), data.test_labels, data.classes)
    trained_on = model.provenance
    same = trained_on.get("checksum") == data.checksum
    numbers = {
        "weights": args.weights,
        "arch": model.spec.arch,
        "parameters": model.parameters,
        "trained_on": trained_on.get("dataset"),
        "trained_on_sha256": trained_on.get("checksum", ""),
        "trained_on_images": model.run.get("train_on", "train"),
        "distilled_from_runs": len(model.run.get("teacher", [])),
        "data": f"emnist-{data.split}",
        "data_sha256": data.checksum,
        "same_data": same,
        "test_images": len(data.test_labels),
        "test_acc": round(result["accuracy"], 2),
        "test_balanced_acc": round(result["balanced_accuracy"], 2),
        "tta_shifts": len(model.tta_shifts),
        "logit_adjustment": model.adjustment is not None,
    }
    if args.json:
        print(json.dumps(numbers, indent=1))
        return 0
    images = "training + validation images" if numbers["trained_on_images"] == "train+val" else "training images"
    teachers = numbers["distilled_from_runs"]
    print(
        f"model:   {args.weights} ({model.spec.arch}, {model.parameters:,} parameters, trained on "
        f"{trained_on.get('dataset')} sha256 {trained_on.get('checksum', '')[:12]}: {images}"
        + (f", distilled from {teachers} run(s))" if teachers else ")")
    )
    print(
        f"data:    emnist-{data.split} test split, {len(data.test_labels):,} images, sha256 {data.short_checksum}"
        f" ({'the data it was trained on' if same else 'DIFFERENT data from training'})"
    )
    applied = [f"{len(model.tta_shifts)} test-time shifts"] if len(model.tta_shifts) > 1 else []
    applied += ["logit adjustment"] if model.adjustment is not None else []
    print(f"applies: {', '.join(applied) or 'nothing beyond the weights'}")
    print(f"test accuracy: {result['accuracy']:.2f}% (balanced {result['balanced_accuracy']:.2f}%)")
    return 0


def _train_specs(args, specs) -> int:
    profile = get_profile(args.profile)
    data = _data(args)
    device, jobs = _machine(args)
    splits = make_splits(data, 0, **profile.limits())
    bound = unique_specs([s.bind(splits, profile) for s in specs])
    print(f"{data.describe()}\nprofile: {profile.name}, {len(bound)} runs, {jobs} at a time on {device}", flush=True)
    results = Runner(Store(), data, device=device, jobs=jobs, progress=True).run_many(bound)
    for r in results:
        print(
            f"{r.spec.label}: validation {r.val_acc:.2f}% (balanced {r.val_balanced_acc:.2f}%), "
            f"{r.history.epochs} epochs, {r.train_seconds:.0f} s on {r.device}"
        )
    return 0


def cmd_trials(args) -> int:
    chosen = [t.spec for name in args.tables for t in TABLES[name] if not args.trials or t.number in args.trials]
    if not chosen:
        raise ConfigError(f"no trial numbered {args.trials} in tables {args.tables} (trials are 1-7)")
    return _train_specs(args, chosen)


def cmd_studies(args) -> int:
    profile = get_profile(args.profile)
    return _train_specs(args, [s for name in args.studies for s in STUDIES[name](profile)])


def cmd_notebooks(args) -> int:
    profile = get_profile(args.profile)
    device, jobs = _machine(args)
    return run_main_job(
        profile,
        args.data,
        args.split,
        device,
        jobs,
        notebooks=args.names,
        plan_only=args.plan,
        timeout=args.timeout,
        resume_command=os.environ.get("EMNIST_RESUME_COMMAND", ""),
    )


def cmd_predict(args) -> int:
    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    device = available_device(args.device or os.environ.get("EMNIST_DEVICE") or "cpu")  # one picture: the CPU is enough
    weights = resolve(args.weights)
    if not weights.is_file():
        raise ModelFileError(
            f"no trained-model file at {shown(weights)}. Make one with notebook 05 (it writes "
            f"results/best_model.pt) or `{PROG} train --recipe cpu --out FILE`, then pass it with "
            "--weights FILE."
        )
    model = TrainedModel.load(weights, allow_code_change=args.allow_code_change)
    results = recognise_files(model, args.images, args.top, device)
    if args.json:
        print("[\n" + ",\n".join(" " + json.dumps(r.as_json()) for r in results) + "\n]")  # one per line
    for r in results:
        if r.ok and not args.json:
            print(r.line())
        elif not r.ok:
            print(f"error: {r.error}", file=sys.stderr)
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"{failed} of {len(results)} picture(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def cmd_search(args) -> int:
    if args.trials < 1:
        raise SearchError(f"--trials must be at least 1, got {args.trials}")
    profile = get_profile(args.profile)
    storage = open_storage(args.storage)
    study = open_study(
        args.study,
        storage,
        space=args.space,
        sampler=args.sampler,
        seed=args.sampler_seed,
        create=args.space is not None,
    )
    space = study_space(study)
    for text in args.enqueue:
        study.enqueue_trial(parse_assignments(text, space), skip_if_exists=True)
    data = _data(args)
    device, jobs = _machine(args)
    where = redact(args.storage) if args.storage else "the journal file under the cache"
    print(
        f"study {args.study}: space {space.name}, sampler {study.user_attrs['sampler']}, "
        f"{finished_count(study)} of {args.trials} trials finished; storage {where}; profile {profile.name}; "
        f"{jobs} worker(s) on {device}",
        flush=True,
    )
    threads = max(1, (os.cpu_count() or 1) // jobs) if device.type == "cpu" else 1
    worker = WorkerArgs(
        args.study, args.storage, args.trials, jobs > 1 or args.storage is not None, str(data.root), data.split,
        profile.name, None if args.device is None else str(device), threads, str(Store().root),
    )  # fmt: skip
    finished = run_workers(worker, jobs)
    study = open_study(args.study, storage, create=False)
    done = finished_count(study)
    print(f"study {args.study}: {done} trials finished ({sum(finished)} by this command)")
    if len(space.directions) == 1 and done:
        best = study.best_trial
        print(f"best: trial {best.number}, balanced validation {best.value:.2f}%: {best.params}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ConfigError, ModelFileError, OutputError, SearchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NotebookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
