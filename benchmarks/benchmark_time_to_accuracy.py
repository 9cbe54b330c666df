"""Time to accuracy: how much sooner this project reaches the report's test accuracy than the report did, in one run.

1. The report's recipe in the report's pipeline (report_pipeline.py: torchvision EMNIST, per-sample transforms,
   DataLoader, plain fp32 Adam loop, validation after every epoch) for its 20 epochs: test accuracy A after the
   last epoch, wall time T of the epochs (training steps + per-epoch validation).
2. A named run (`--recipe NAME` from emnist_utils.experiments.recipes.NAMED_RUNS; default: the one with the shortest
   estimated training time among those with at most 1M parameters, estimated here with
   experiments.plan.measure_throughput) trained with `fit`, timed until its test accuracy reaches A.

Prints T / time-to-A. The test accuracy after every epoch of run 2 exists only for this benchmark's stopping rule:
it is computed outside fit's epoch timing, and never used to choose anything. It is the accuracy of the weights
being trained, with the logit adjustment its trained-model file would apply (strength chosen on the validation part;
on a balanced training split it is zero and changes nothing); for a recipe with a weight average (EMA) the delivered
model is evaluated once more after the last epoch, and counts (with the whole fit's time) if it reaches A only then.
Setting up the data is excluded on both sides; neither side gets a warm-up. Results go to
benchmarks/results/benchmark_time_to_accuracy_<device>.{txt,json}.

    .venv/bin/python benchmarks/benchmark_time_to_accuracy.py [--recipe fast] [--threads N] [--quick]

About 20 minutes on a 2-core CPU. A measurement, not a test: it prints the machine it ran on (CPU, cores, torch
version, GPU) and warns when the load average says the machine was busy; run it on an otherwise idle one.
--quick: 3 training batches, 1 epoch on each side.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import measure
import report_pipeline
import torch
from tabulate import tabulate
from torch import nn

from emnist_utils.core.data import data_location, load_emnist
from emnist_utils.core.evaluation import accuracy, logit_adjustment, predict_logits
from emnist_utils.core.registry import build_model, count_parameters
from emnist_utils.core.splits import make_splits
from emnist_utils.core.training import fit, input_normalisation, seed_everything
from emnist_utils.experiments.plan import estimate_seconds, measure_throughput
from emnist_utils.experiments.recipes import NAMED_RUNS
from emnist_utils.experiments.store import validation_metrics
from emnist_utils.experiments.trials import REPORT_FINAL

MAX_PARAMETERS = 1_000_000
QUICK_LIMITS = {
    "train_limit": 3 * report_pipeline.BATCH_SIZE,
    "val_limit": report_pipeline.BATCH_SIZE,
    "test_limit": 470,
}


class TargetReached(Exception):
    """Raised by the epoch callback to end `fit` once the target is reached: later epochs cannot change the
    time to reach it."""


def fastest_small_run(splits, device: torch.device, steps: int) -> tuple[str, dict]:
    """The named run with the shortest estimated training time among those with at most MAX_PARAMETERS."""
    estimates, rates = {}, {}
    for name, run in NAMED_RUNS.items():
        parameters = count_parameters(build_model(run.model, splits.num_classes))
        if parameters > MAX_PARAMETERS:
            continue
        r = run.recipe
        cost = json.dumps([run.model.as_dict(), r.batch_size, r.augment, r.precision, r.channels_last, r.ema_decay > 0])
        if cost not in rates:
            measure.log(f"--- estimating the training time of {name}")
            rates[cost] = measure_throughput(run, splits.num_classes, device, steps=steps)
        estimates[name] = {
            "parameters": parameters,
            "img_per_s": rates[cost],
            "epochs": r.epochs,
            "estimated_seconds": estimate_seconds(run, rates[cost], len(splits.train_labels), len(splits.val_labels)),
        }
    return min(estimates, key=lambda name: estimates[name]["estimated_seconds"]), estimates


def report_run(root: Path, splits, epochs: int, seed: int, device: torch.device) -> dict:
    train_set, val_set, test_set = report_pipeline.datasets(
        root,
        splits.mean,
        splits.std,
        seed=seed,
        train_limit=len(splits.train_labels),
        val_limit=len(splits.val_labels),
        test_limit=len(splits.test_labels),
    )
    train_loader = report_pipeline.loader(train_set, shuffle=True)
    val_loader = report_pipeline.loader(val_set, shuffle=False)
    model, optimizer = report_pipeline.new_model(splits.num_classes, device, seed)
    loss_fn = nn.CrossEntropyLoss()
    records, elapsed = [], 0.0
    for epoch in range(1, epochs + 1):
        _, train_s = measure.timed(
            lambda: report_pipeline.train_epoch(model, train_loader, optimizer, loss_fn, device), device
        )
        (_, val_acc), val_s = measure.timed(lambda: report_pipeline.evaluate(model, val_loader, device), device)
        elapsed += train_s + val_s
        records.append({"epoch": epoch, "seconds": train_s + val_s, "elapsed_seconds": elapsed, "val_acc": val_acc})
        measure.log(f"[report] epoch {epoch}/{epochs}: {train_s + val_s:.1f} s, val acc {val_acc:.2f}%")
    test_acc = report_pipeline.evaluate(model, report_pipeline.loader(test_set, shuffle=False), device)[1]
    return {"epochs": records, "seconds": elapsed, "test_acc": test_acc}


def project_run(name: str, splits, target: float, seed: int, device: torch.device, quick: bool) -> dict:
    run = NAMED_RUNS[name]
    recipe = run.recipe.with_(epochs=1) if quick else run.recipe
    mean, std = input_normalisation(recipe, splits)
    seed_everything(seed)
    model = build_model(run.model, splits.num_classes)
    records: list[dict] = []
    checking = [0.0]  # seconds spent in the callback, inside fit's wall time but not part of training

    prior = splits.train_prior()

    def test_accuracy(m) -> float:
        """Test accuracy with the logit adjustment a trained-model file of this run would apply: its strength
        chosen on the validation part (balanced accuracy when the test split is balanced), never on the test."""
        val_logits = predict_logits(m, splits.val_images, mean, std, device=device)
        strength = validation_metrics(val_logits, splits)["adjustment_strength"]  # the store's rule
        logits = predict_logits(m, splits.test_images, mean, std, device=device) + logit_adjustment(prior, strength)
        return accuracy(logits.argmax(1), splits.test_labels)

    def check(epoch: int, history) -> None:
        test_acc, seconds = measure.timed(lambda: test_accuracy(model), device)
        checking[0] += seconds
        records.append(
            {
                "epoch": epoch,
                "seconds": history.seconds[-1],
                "elapsed_seconds": sum(history.seconds),
                "val_acc": history.val_acc[-1],
                "test_acc": test_acc,
            }
        )
        measure.log(
            f"[{name}] epoch {epoch}/{recipe.epochs}: {sum(history.seconds):.1f} s so far, "
            f"test acc {test_acc:.2f}% (target {target:.2f}%)"
        )
        if test_acc >= target:
            raise TargetReached

    reached = None
    try:
        fitted, fit_s = measure.timed(
            lambda: fit(model, splits, recipe, seed=seed, device=device, progress=False, callbacks=[check]), device
        )
    except TargetReached:
        reached = {"epochs": records[-1]["epoch"], "seconds": records[-1]["elapsed_seconds"], "weights": "trained"}
    else:
        delivered = test_accuracy(fitted.model) if fitted.model is not model else records[-1]["test_acc"]
        records[-1]["delivered_test_acc"] = delivered
        if delivered >= target:  # the weight average reaches it only at the end: the whole fit counts
            reached = {
                "epochs": records[-1]["epoch"],
                "seconds": fit_s - checking[0],
                "weights": "delivered (weight average)",
            }
    return {
        "name": name,
        "run": run.as_dict(),
        "epochs_run": recipe.epochs,
        "epochs": records,
        "reached": reached,
        "best_test_acc": max([r["test_acc"] for r in records] + [records[-1].get("delivered_test_acc", 0.0)]),
    }


def report_text(info: dict, args, splits, res: dict) -> str:
    rep, proj, name = res["report"], res["project"], res["project"]["name"]
    reached = proj["reached"]
    rows = [
        [
            "report pipeline, report recipe (REPORT_FINAL)",
            len(rep["epochs"]),
            f"{rep['seconds']:.1f}",
            f"{rep['test_acc']:.2f}",
        ],
        [
            f"fit, NAMED_RUNS['{name}'] ({proj['run']['name']})",
            reached["epochs"] if reached else f"not reached in {proj['epochs_run']}",
            f"{reached['seconds']:.1f}" if reached else "-",
            f"{proj['best_test_acc']:.2f}",
        ],
    ]
    lines = [
        measure.describe_machine(info),
        measure.describe_data(splits, " (--quick subset)" if args.quick else ""),
    ]
    if res["choice"]:
        lines += [
            "",
            f"Run on fit: '{name}', the shortest estimated training time among NAMED_RUNS with at most "
            f"{MAX_PARAMETERS:,} parameters",
            tabulate(
                [
                    [n, f"{e['parameters']:,}", e["epochs"], f"{e['img_per_s']:,.0f}", f"{e['estimated_seconds']:.0f}"]
                    for n, e in res["choice"].items()
                ],
                headers=["named run", "parameters", "epochs", "img/s", "estimated s"],
                disable_numparse=True,
            ),
        ]
    lines += [
        "",
        "Time to accuracy (wall s = training steps + per-epoch validation; data setup excluded)",
        tabulate(rows, headers=["run", "epochs", "wall s", "test acc %"], disable_numparse=True),
        "",
    ]
    if reached:
        lines.append(
            f"Target A = {rep['test_acc']:.2f}% reached after {reached['epochs']} epoch(s) "
            f"({reached['weights']} weights): T / time-to-A = {rep['seconds']:.1f} / {reached['seconds']:.1f} s"
            f" = {rep['seconds'] / reached['seconds']:.2f}x"
        )
    else:
        lines.append(
            f"Target A = {rep['test_acc']:.2f}% NOT reached within {proj['epochs_run']} epoch(s) of "
            f"'{name}'; no speed-up to report"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = measure.parser(__doc__)
    p.add_argument("--recipe", choices=sorted(NAMED_RUNS), help="the named run trained with fit (default: see above)")
    p.add_argument(
        "--report-epochs",
        type=int,
        default=REPORT_FINAL.recipe.epochs,
        help=f"epochs of the report run (default {REPORT_FINAL.recipe.epochs}; --quick: 1)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.report_epochs = 1
    device, info = measure.start(args)
    root, split = data_location(args.data, args.split)
    data = load_emnist(root, split, download=False)
    splits = make_splits(data, args.seed, **(QUICK_LIMITS if args.quick else {}))
    name, choice = args.recipe, {}
    if name is None:
        name, choice = fastest_small_run(splits, device, steps=1 if args.quick else 4)
    with tempfile.TemporaryDirectory(prefix="emnist-benchmark-") as tmp:
        tv_root = report_pipeline.torchvision_root(data, Path(tmp))
        del data
        measure.log(f"--- report recipe in the report pipeline, {args.report_epochs} epoch(s)")
        report = report_run(tv_root, splits, args.report_epochs, args.seed, device)
    measure.log(f"--- NAMED_RUNS['{name}'] on fit, until test accuracy {report['test_acc']:.2f}%")
    project = project_run(name, splits, report["test_acc"], args.seed, device, args.quick)
    reached = project["reached"]
    results = {
        "report": report,
        "project": project,
        "choice": choice,
        "target_acc": report["test_acc"],
        "speedup": report["seconds"] / reached["seconds"] if reached else None,
        "memory": measure.peak_memory(device),
    }
    text = report_text(info, args, splits, results)
    measure.publish("time_to_accuracy", args, device, info, text, {**splits.provenance, **splits.sizes()}, results)


if __name__ == "__main__":
    main()
