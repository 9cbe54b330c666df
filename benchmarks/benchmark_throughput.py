"""Training and evaluation throughput (images/s) of the report's final model (REPORT_FINAL: Architecture 2
(8, 32, 600, 0.5), Adam lr 1e-3, batch 290) in the report's pipeline and in this project's `fit`, side by side in
one run, with the ratio.

- report pipeline (report_pipeline.py): torchvision EMNIST, per-sample ToTensor + Normalize, DataLoader(batch 290,
  shuffle=True), plain fp32 loop with torch's default Adam, validation through a DataLoader after every epoch;
- project pipeline: `emnist_utils.core.training.fit` itself with the report's recipe (in-memory uint8, per-batch
  normalisation, channels_last on the CPU, foreach Adam, validation after every epoch), as the notebooks run it.

Each pipeline runs in its own subprocess, so its peak resident memory (VmHWM; on CUDA also torch's peak GPU
allocation) is its own. Both use the same data, train/validation split, normalisation and seed. Training is timed
for --epochs epochs (an epoch = training steps + that epoch's validation) after an untimed warm-up; images/s is
the mean ± std over the epochs. Evaluation is inference over the whole test split, --eval-repeats passes after a
warm-up, mean ± std. Results go to benchmarks/results/benchmark_throughput_<device>.{txt,json}.

    .venv/bin/python benchmarks/benchmark_throughput.py [--epochs 3] [--num-workers 0] [--threads N] [--quick]

A measurement, not a test: it prints the machine it ran on (CPU, cores, torch version, GPU) and warns when the
load average says the machine was busy; run it on an otherwise idle one. --quick: 3 training batches, 2 epochs.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import measure
import report_pipeline
import torch
from tabulate import tabulate
from torch import nn

from emnist_utils.core.data import data_location, load_emnist
from emnist_utils.core.evaluation import accuracy, evaluate_split, predict_logits
from emnist_utils.core.registry import build_model
from emnist_utils.core.splits import make_splits
from emnist_utils.core.training import fit, seed_everything
from emnist_utils.experiments.trials import REPORT_FINAL

QUICK_LIMITS = {
    "train_limit": 3 * report_pipeline.BATCH_SIZE,
    "val_limit": report_pipeline.BATCH_SIZE,
    "test_limit": 470,
}


# ----------------------------------------------------------------------------- the two workers


def report_worker(spec: dict, device: torch.device) -> dict:
    (train_set, val_set, test_set), setup_s = measure.timed(
        lambda: report_pipeline.datasets(
            Path(spec["torchvision_root"]), spec["mean"], spec["std"], seed=spec["seed"], **spec["limits"]
        )
    )
    train_loader = report_pipeline.loader(train_set, shuffle=True, num_workers=spec["num_workers"])
    val_loader = report_pipeline.loader(val_set, shuffle=False, num_workers=spec["num_workers"])
    test_loader = report_pipeline.loader(test_set, shuffle=False, num_workers=spec["num_workers"])
    loss_fn = nn.CrossEntropyLoss()

    model, optimizer = report_pipeline.new_model(spec["num_classes"], device, spec["seed"])  # warm-up, thrown away
    report_pipeline.train_epoch(model, train_loader, optimizer, loss_fn, device, spec["warmup_batches"])
    report_pipeline.evaluate(model, val_loader, device, max_batches=1)

    model, optimizer = report_pipeline.new_model(spec["num_classes"], device, spec["seed"])
    epochs = []
    for epoch in range(1, spec["epochs"] + 1):
        _, train_s = measure.timed(
            lambda: report_pipeline.train_epoch(model, train_loader, optimizer, loss_fn, device), device
        )
        (_, val_acc), val_s = measure.timed(lambda: report_pipeline.evaluate(model, val_loader, device), device)
        epochs.append(
            {
                "epoch": epoch,
                "seconds": train_s + val_s,
                "train_seconds": train_s,
                "val_seconds": val_s,
                "val_acc": val_acc,
            }
        )
        measure.log(
            f"[report] epoch {epoch}/{spec['epochs']}: {train_s + val_s:.1f} s "
            f"(train {train_s:.1f} s, validation {val_s:.1f} s), val acc {val_acc:.2f}%"
        )
    peak_train = measure.peak_rss_mib()
    test_acc = report_pipeline.evaluate(model, test_loader, device)[1]
    evaluation = measure.repeat(
        lambda: report_pipeline.evaluate(model, test_loader, device),
        items=len(test_set),
        repeats=spec["eval_repeats"],
        warmup=0,
        device=device,
    )  # the pass above warmed up
    return {
        "setup_seconds": setup_s,
        "train_images": len(train_set),
        "epochs": epochs,
        "peak_rss_train_mib": peak_train,
        "test_acc": test_acc,
        "evaluation": evaluation.as_dict(),
        "evaluation_how": f"DataLoader batch {report_pipeline.BATCH_SIZE}, no_grad",
    }


def project_worker(spec: dict, device: torch.device) -> dict:
    def load():
        data = load_emnist(spec["data_root"], spec["split"], download=False)
        return make_splits(data, spec["seed"], **spec["limits"])

    splits, setup_s = measure.timed(load)
    recipe = REPORT_FINAL.recipe.with_(epochs=spec["epochs"])
    channels_last = recipe.channels_last and device.type == "cpu"  # fit's rule

    n = spec["warmup_batches"] * recipe.batch_size  # warm-up: a short fit of a model thrown away
    small = replace(
        splits,
        train_images=splits.train_images[:n],
        train_labels=splits.train_labels[:n],
        val_images=splits.val_images[: recipe.batch_size],
        val_labels=splits.val_labels[: recipe.batch_size],
    )
    fit(
        build_model(REPORT_FINAL.model, splits.num_classes),
        small,
        recipe.with_(epochs=1),
        device=device,
        progress=False,
    )

    def announce(epoch, history) -> None:
        measure.log(
            f"[project] epoch {epoch}/{recipe.epochs}: {history.seconds[-1]:.1f} s (train + validation), "
            f"val acc {history.val_acc[-1]:.2f}%"
        )

    seed_everything(spec["seed"])
    model = build_model(REPORT_FINAL.model, splits.num_classes)
    fitted = fit(model, splits, recipe, seed=spec["seed"], device=device, progress=False, callbacks=[announce])
    peak_train = measure.peak_rss_mib()
    # fit times whole epochs; its validation is timed again on its own to tell the training steps apart
    validation = measure.repeat(
        lambda: evaluate_split(
            fitted.model,
            splits.val_images,
            splits.val_labels,
            splits.mean,
            splits.std,
            device=device,
            channels_last=channels_last,
        ),
        items=len(splits.val_labels),
        repeats=spec["eval_repeats"],
        device=device,
    )
    val_s = measure.mean_std(validation.seconds)[0]
    h = fitted.history
    epochs = [
        {"epoch": i + 1, "seconds": s, "train_seconds": s - val_s, "val_seconds": val_s, "val_acc": h.val_acc[i]}
        for i, s in enumerate(h.seconds)
    ]

    def test_accuracy() -> float:
        logits = predict_logits(fitted.model, splits.test_images, splits.mean, splits.std, device=device)
        return accuracy(logits.argmax(1), splits.test_labels)

    test_acc = test_accuracy()
    evaluation = measure.repeat(
        test_accuracy, items=len(splits.test_labels), repeats=spec["eval_repeats"], warmup=0, device=device
    )
    return {
        "setup_seconds": setup_s,
        "train_images": len(splits.train_labels),
        "epochs": epochs,
        "peak_rss_train_mib": peak_train,
        "test_acc": test_acc,
        "evaluation": evaluation.as_dict(),
        "evaluation_how": "predict_logits, batch 2048, inference_mode",
    }


def worker(spec: dict) -> None:
    measure.set_threads(spec["threads"])
    device = torch.device(spec["device"])
    after_imports = measure.current_rss_mib()  # torch and torchvision imported, no data yet
    result = (report_worker if spec["pipeline"] == "report" else project_worker)(spec, device)
    seconds = [e["seconds"] for e in result["epochs"]]
    result.update(
        pipeline=spec["pipeline"],
        threads=torch.get_num_threads(),
        rss_after_imports_mib=after_imports,
        epoch_img_per_s=[result["train_images"] / s for s in seconds],
        train_steps_img_per_s=[result["train_images"] / e["train_seconds"] for e in result["epochs"]],
        memory=measure.peak_memory(device),
    )
    measure.finish_worker(spec, result)


# ----------------------------------------------------------------------------- the run


def report_text(info: dict, args, splits, results: dict) -> str:
    rows, eval_rows = [], []
    for name, r in (("report (torchvision + DataLoader)", results["report"]), ("project (fit)", results["project"])):
        val_s = measure.mean_std([e["val_seconds"] for e in r["epochs"]])[0]
        rows.append(
            [
                name,
                measure.format_rate(*measure.mean_std(r["epoch_img_per_s"])),
                measure.format_rate(*measure.mean_std(r["train_steps_img_per_s"])),
                f"{val_s:.2f}",
                f"{r['epochs'][-1]['val_acc']:.2f}",
                f"{r['peak_rss_train_mib']:.0f}",
                f"{r['peak_rss_train_mib'] - (r['rss_after_imports_mib'] or 0):.0f}",
            ]
            + ([f"{r['memory']['cuda_max_allocated_mib']:.0f}"] if "cuda_max_allocated_mib" in r["memory"] else [])
        )
        ev = r["evaluation"]
        eval_rows.append(
            [
                f"{name}: {r['evaluation_how']}",
                measure.format_rate(ev["img_per_s_mean"], ev["img_per_s_std"]),
                f"{measure.mean_std(ev['seconds'])[0]:.2f}",
                f"{r['test_acc']:.2f}",
            ]
        )
    gpu = ["peak GPU MiB"] if "cuda_max_allocated_mib" in results["project"]["memory"] else []
    ratios = results["ratios"]
    lines = [
        measure.describe_machine(info),
        measure.describe_data(splits, " (--quick subset)" if args.quick else ""),
        f"Model:   REPORT_FINAL {REPORT_FINAL.model.arch} {tuple(REPORT_FINAL.model.shape().values())}, batch "
        f"{REPORT_FINAL.recipe.batch_size}, Adam lr {REPORT_FINAL.recipe.lr:g}; report DataLoader num_workers="
        f"{args.num_workers}",
        "",
        f"Training: {args.epochs} epoch(s) timed per pipeline after a warm-up; an epoch = training steps + validation;"
        " img/s mean ± std over epochs",
        tabulate(
            rows,
            headers=[
                "pipeline",
                "epoch img/s",
                "train steps img/s",
                "val s/epoch",
                "val acc %",
                "peak RSS MiB",
                "RSS above imports MiB",
                *gpu,
            ],
            disable_numparse=True,
        ),
        "  project 'train steps' = fit's epoch time minus its validation timed on its own; peak RSS is each "
        "pipeline's own process" + (" (DataLoader workers not included)" if args.num_workers else ""),
        "",
        f"Evaluation: whole test split ({len(splits.test_labels):,} images), inference only, "
        f"mean ± std over {args.eval_repeats} passes",
        tabulate(eval_rows, headers=["pipeline", "img/s", "seconds", "test acc %"], disable_numparse=True),
        "",
        "Ratios (project / report)",
        tabulate([[k, f"{v:.2f}x"] for k, v in ratios.items()], headers=["", "ratio"], disable_numparse=True),
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = measure.parser(__doc__)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per pipeline (default 3; --quick: 2)")
    p.add_argument("--eval-repeats", type=int, default=3, help="timed passes over the test split (default 3)")
    p.add_argument("--warmup-batches", type=int, default=10, help="untimed training steps first (default 10)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the report pipeline")
    args = p.parse_args(argv)
    if args.worker:
        worker(measure.worker_spec(args.worker))
        return
    if args.quick:
        args.epochs, args.eval_repeats, args.warmup_batches = 2, 2, 1
    if args.epochs < 1 or args.eval_repeats < 1:
        p.error("--epochs and --eval-repeats must be at least 1")
    device, info = measure.start(args)
    root, split = data_location(args.data, args.split)
    data = load_emnist(root, split, download=False)
    limits = QUICK_LIMITS if args.quick else {}
    splits = make_splits(data, args.seed, **limits)
    with tempfile.TemporaryDirectory(prefix="emnist-benchmark-") as tmp:
        spec = {
            "data_root": str(root),
            "split": split,
            "mean": splits.mean,
            "std": splits.std,
            "num_classes": splits.num_classes,
            "device": str(device),
            "seed": args.seed,
            "epochs": args.epochs,
            "threads": args.threads,
            "num_workers": args.num_workers,
            "limits": limits,
            "warmup_batches": args.warmup_batches,
            "eval_repeats": args.eval_repeats,
            "torchvision_root": str(report_pipeline.torchvision_root(data, Path(tmp) / "torchvision")),
        }
        del data
        results = {
            name: measure.run_in_subprocess(__file__, {**spec, "pipeline": name}, Path(tmp), name)
            for name in ("report", "project")
        }
    rep, proj = results["report"], results["project"]
    results["ratios"] = {
        "training (whole epochs)": measure.mean_std(proj["epoch_img_per_s"])[0]
        / measure.mean_std(rep["epoch_img_per_s"])[0],
        "training steps only": measure.mean_std(proj["train_steps_img_per_s"])[0]
        / measure.mean_std(rep["train_steps_img_per_s"])[0],
        "evaluation": proj["evaluation"]["img_per_s_mean"] / rep["evaluation"]["img_per_s_mean"],
    }
    text = report_text(info, args, splits, results)
    measure.publish("throughput", args, device, info, text, {**splits.provenance, **splits.sizes()}, results)


if __name__ == "__main__":
    main()
