"""How much faster is this project's training than the 2022 report's, and how close is it to the bound?

One run, one machine, one data set, one model (the report's final model, FINAL_CONFIG), compared four ways:

1. report pipeline: torchvision.datasets.EMNIST, per-sample ToTensor + Normalize, DataLoader(batch 290,
   shuffle=True), a plain fp32 loop with default Adam, per-epoch validation through a DataLoader;
2. project pipeline: emnist_utils.training.fit itself (in-memory uint8, per-batch normalisation,
   channels_last, foreach Adam), i.e. exactly what the notebooks run;
3. compute bound: forward + backward + Adam on ONE batch already in memory, per lever (fp32 contiguous,
   fp32 channels_last, bf16 autocast, optionally torch.compile), so we can tell which levers move the
   bound itself and which only remove pipeline overhead;
4. evaluation: the whole test split, inference only, through each pipeline.

Each pipeline trains in its own subprocess (this script re-run with a hidden --worker flag) so that its peak
resident memory is its own. `--mode time-to-accuracy` instead trains the report recipe to the end, takes its
test accuracy A and time T, and reports how long a project recipe (--recipe) needs to reach A.

This is a measurement script, not a test: run it on a quiet machine (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file from anywhere, installed or not
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from emnist_utils.data import (Batches, Splits, _file_name, data_location, load_emnist, make_splits,  # noqa: E402
                               train_val_split)
from emnist_utils.evaluation import accuracy, evaluate_loss_accuracy, predict_logits  # noqa: E402
from emnist_utils.models import FINAL_CONFIG, TrialConfig, build_model  # noqa: E402
from emnist_utils.training import (RECIPES, REPORT_RECIPE, History, Recipe, autocast_context, fit,  # noqa: E402
                                   make_optimizer, pick_device, seed_everything)


# torchvision's EMNIST only knows its own split names, so the stand-in is presented to it as "balanced".
TORCHVISION_SPLIT = "balanced"


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does; --quick shrinks everything to a smoke test of the script."""

    train_limit: int | None = None  # training images per epoch (None: the whole training split)
    val_limit: int | None = None
    test_limit: int | None = None
    warmup_batches: int = 10  # training steps before timing: oneDNN primitives, allocator, thread pool
    bound_min_steps: int = 20
    bound_min_seconds: float = 5.0
    eval_repeats: int = 3  # evaluation passes; the fastest is reported (the least disturbed one)


FULL = Sizes()
QUICK = Sizes(train_limit=10 * FINAL_CONFIG.batch_size, val_limit=2 * FINAL_CONFIG.batch_size, test_limit=1000,
              warmup_batches=2, bound_min_steps=3, bound_min_seconds=0.3, eval_repeats=1)


@dataclass
class WorkerSpec:
    """Everything a worker subprocess needs; written as JSON so the worker imports nothing from the parent."""

    pipeline: str  # report | project
    mode: str  # throughput | time-to-accuracy
    out: str
    data_root: str
    split: str
    torchvision_root: str
    mean: float
    std: float
    device: str
    seed: int
    epochs: int
    threads: int | None
    num_workers: int
    sizes: dict
    recipe: str = "report"
    target_acc: float | None = None


# ----------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer stopped afterwards measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(device: torch.device, fn: Callable):
    """(fn(), wall seconds), synchronised on both sides."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - started


def _proc_status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Peak resident memory of this process. VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork+exec,
    so a worker would report at least its parent's peak; VmHWM belongs to the worker's own address space."""
    hwm = _proc_status_mib("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def current_rss_mib() -> float | None:
    return _proc_status_mib("VmRSS")


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on; the load average warns when the machine was not quiet."""
    import torchvision

    cpuinfo: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpuinfo.setdefault(key.strip(), value.strip())  # the first processor's entry
    except OSError:
        pass
    cpu = cpuinfo.get("model name") or platform.processor() or platform.machine()
    flags = set(cpuinfo.get("flags", "").split())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable,
            "bf16_hardware": sorted(flags & {"avx512_bf16", "amx_bf16"}) or "none (bf16 is emulated)",
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "device": str(device),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def img_per_s(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


def log(message: str) -> None:
    """Progress goes to stderr so that stdout holds only the result tables."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the report's pipeline


def build_torchvision_root(files: dict[str, Path], dest: Path) -> Path:
    """A folder torchvision.datasets.EMNIST(dest, split="balanced", download=False) accepts.

    torchvision reads decompressed files named emnist-<split>-<train|test>-<images-idx3|labels-idx1>-ubyte
    from <root>/EMNIST/raw/ and accepts only its own split names, so the verified files of whatever split
    was loaded are decompressed there under the "balanced" names.
    """
    raw = dest / "EMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for part in ("train", "test"):
        for kind in ("images", "labels"):
            source = files[f"{part}_{kind}"]
            opener = gzip.open if source.suffix == ".gz" else open
            with opener(source, "rb") as src, open(raw / _file_name(TORCHVISION_SPLIT, part, kind), "wb") as dst:
                shutil.copyfileobj(src, dst)
    return dest


def report_datasets(spec: WorkerSpec):
    """Train / validation / test datasets as the report built them: torchvision EMNIST + per-sample transforms.

    torchvision keeps EMNIST's stored (transposed) orientation; both training and test images are transposed
    alike, so accuracy is comparable with the project's upright images, and speed is unaffected.
    """
    from torch.utils.data import Subset
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((spec.mean,), (spec.std,))])
    train_set = datasets.EMNIST(spec.torchvision_root, split=TORCHVISION_SPLIT, train=True, download=False,
                                transform=transform)
    test_set = datasets.EMNIST(spec.torchvision_root, split=TORCHVISION_SPLIT, train=False, download=False,
                               transform=transform)
    sizes = Sizes(**spec.sizes)
    train_idx, val_idx = train_val_split(len(train_set), spec.seed)  # the project's split, same seed
    train_idx, val_idx = train_idx[:sizes.train_limit], val_idx[:sizes.val_limit]
    test_idx = range(len(test_set))[:sizes.test_limit]
    return Subset(train_set, train_idx.tolist()), Subset(train_set, val_idx.tolist()), Subset(test_set, test_idx)


def report_train_epoch(model, loader, optimizer, loss_fn, device, max_batches: int | None = None) -> tuple[float, float]:
    """One epoch of the report's loop (with its per-batch .item() bookkeeping); returns (loss, accuracy %)."""
    model.train()
    running_loss, correct, seen = 0.0, 0, 0
    for i, (images, labels) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(images)
        loss = loss_fn(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * len(labels)
        correct += (outputs.argmax(1) == labels).sum().item()
        seen += len(labels)
    return running_loss / max(seen, 1), 100.0 * correct / max(seen, 1)


@torch.no_grad()
def report_evaluate(model, loader, device, max_batches: int | None = None) -> tuple[float, float]:
    """The report's evaluation loop: eval mode, no_grad, batches from a DataLoader; (loss, accuracy %)."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for i, (images, labels) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        outputs = model(images)
        loss_sum += nn.functional.cross_entropy(outputs, labels, reduction="sum").item()
        correct += (outputs.argmax(1) == labels).sum().item()
        seen += len(labels)
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def report_worker(spec: WorkerSpec) -> dict:
    from torch.utils.data import DataLoader

    device, cfg, sizes = torch.device(spec.device), FINAL_CONFIG, Sizes(**spec.sizes)
    (train_set, val_set, test_set), setup_s = timed(device, lambda: report_datasets(spec))

    def loader(dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=spec.num_workers)

    train_loader, val_loader, test_loader = loader(train_set, True), loader(val_set, False), loader(test_set, False)
    loss_fn = nn.CrossEntropyLoss()

    def new_model():
        seed_everything(spec.seed)
        model = build_model(cfg).to(device)
        return model, torch.optim.Adam(model.parameters(), lr=cfg.lr)  # the report's optimiser: defaults

    if spec.mode == "throughput":  # warm-up on a throw-away model: one-time costs are not per-epoch costs
        model, optimizer = new_model()
        report_train_epoch(model, train_loader, optimizer, loss_fn, device, sizes.warmup_batches)
        report_evaluate(model, val_loader, device, max_batches=1)

    model, optimizer = new_model()
    epochs = []
    for epoch in range(spec.epochs):
        _, train_s = timed(device, lambda: report_train_epoch(model, train_loader, optimizer, loss_fn, device))
        (_, val_acc), val_s = timed(device, lambda: report_evaluate(model, val_loader, device))
        epochs.append({"epoch": epoch + 1, "seconds": train_s + val_s, "train_seconds": train_s,
                       "val_seconds": val_s, "val_acc": val_acc})
        log(f"[report] epoch {epoch + 1}/{spec.epochs}: {train_s + val_s:.1f} s "
            f"(train {train_s:.1f} s, validation {val_s:.1f} s), val acc {val_acc:.2f}%")
    peak_train = peak_rss_mib()
    evaluation = time_evaluation(device, sizes.eval_repeats, len(test_set),
                                 warmup=lambda: report_evaluate(model, test_loader, device, max_batches=1),
                                 run=lambda: report_evaluate(model, test_loader, device)[1])
    return {"setup_seconds": setup_s, "train_images": len(train_set), "epochs": epochs,
            "peak_rss_train_mib": peak_train, **evaluation}


# ----------------------------------------------------------------------------- this project's pipeline


class TargetReached(Exception):
    """Raised from a fit callback to end training once the target accuracy is reached: fit has no early stop,
    and the epochs after the target do not change the time-to-accuracy."""


def project_splits(spec: WorkerSpec) -> Splits:
    sizes = Sizes(**spec.sizes)
    data = load_emnist(spec.data_root, spec.split, download=False)
    return make_splits(data, spec.seed, sizes.train_limit, sizes.val_limit, sizes.test_limit)


def uses_channels_last(recipe: Recipe, device: torch.device) -> bool:
    """fit's rule for the memory layout (channels_last helps on CPU only)."""
    return recipe.channels_last and device.type == "cpu"


def warm_up_fit(splits: Splits, cfg: TrialConfig, recipe: Recipe, device, batches: int) -> None:
    """One short fit on a throw-away model, so the timed fit does not pay one-time costs."""
    n = batches * cfg.batch_size
    small = replace(splits, train_images=splits.train_images[:n], train_labels=splits.train_labels[:n],
                    val_images=splits.val_images[:cfg.batch_size], val_labels=splits.val_labels[:cfg.batch_size])
    fit(build_model(cfg), small, cfg.with_(epochs=1), recipe=recipe, device=device, progress=False)


def validation_seconds(model, splits: Splits, recipe: Recipe, device) -> float:
    """Time of fit's per-epoch validation, measured on its own so the train steps can be told apart."""
    channels_last = uses_channels_last(recipe, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    _, seconds = timed(device, lambda: evaluate_loss_accuracy(model, splits.val_images, splits.val_labels,
                                                              splits.mean, splits.std, device=device,
                                                              channels_last=channels_last))
    model.to(memory_format=torch.contiguous_format)
    return seconds


def project_throughput(spec: WorkerSpec, splits: Splits, device) -> tuple[nn.Module, list[dict]]:
    """fit itself, progress off, for spec.epochs epochs after a warm-up fit."""
    cfg, recipe = FINAL_CONFIG.with_(epochs=spec.epochs), REPORT_RECIPE
    warm_up_fit(splits, cfg, recipe, device, Sizes(**spec.sizes).warmup_batches)
    seed_everything(spec.seed)
    model = build_model(cfg)

    def announce(epoch: int, history: History) -> None:
        log(f"[project] epoch {epoch}/{cfg.epochs}: {history.seconds[-1]:.1f} s (train + validation), "
            f"val acc {history.val_acc[-1]:.2f}%")

    history, _ = timed(device, lambda: fit(model, splits, cfg, seed=spec.seed, recipe=recipe, device=device,
                                           progress=False, callbacks=[announce]))
    val_s = validation_seconds(model, splits, recipe, device)
    epochs = [{"epoch": i + 1, "seconds": s, "train_seconds": s - val_s, "val_seconds": val_s,
               "val_acc": history.val_acc[i]} for i, s in enumerate(history.seconds)]
    return model, epochs


def project_time_to_accuracy(spec: WorkerSpec, splits: Splits, device) -> tuple[nn.Module, list[dict]]:
    """fit with the chosen recipe, test accuracy after every epoch (outside fit's timing), until >= target."""
    cfg, recipe = RECIPES[spec.recipe]
    cfg = cfg.with_(epochs=spec.epochs)
    seed_everything(spec.seed)
    model = build_model(cfg)
    epochs: list[dict] = []

    def check(epoch: int, history: History) -> None:
        test_acc = accuracy(predict_logits(model, splits.test_images, splits.mean, splits.std).argmax(1),
                            splits.test_labels)
        elapsed = sum(history.seconds)
        epochs.append({"epoch": epoch, "seconds": history.seconds[-1], "elapsed_seconds": elapsed,
                       "val_acc": history.val_acc[-1], "test_acc": test_acc})
        log(f"[project:{spec.recipe}] epoch {epoch}/{cfg.epochs}: {elapsed:.1f} s so far, "
            f"test acc {test_acc:.2f}% (target {spec.target_acc:.2f}%)")
        if test_acc >= spec.target_acc:
            raise TargetReached

    try:
        fit(model, splits, cfg, seed=spec.seed, recipe=recipe, device=device, progress=False, callbacks=[check])
    except TargetReached:
        pass
    model.to(memory_format=torch.contiguous_format)  # fit leaves channels_last on when it stops early
    return model, epochs


def project_worker(spec: WorkerSpec) -> dict:
    device, sizes = torch.device(spec.device), Sizes(**spec.sizes)
    splits, setup_s = timed(device, lambda: project_splits(spec))
    train = project_throughput if spec.mode == "throughput" else project_time_to_accuracy
    model, epochs = train(spec, splits, device)
    peak_train = peak_rss_mib()
    model.to(device)
    evaluation = time_evaluation(
        device, sizes.eval_repeats, len(splits.test_labels),
        warmup=lambda: predict_logits(model, splits.test_images[:2048], splits.mean, splits.std),
        run=lambda: accuracy(predict_logits(model, splits.test_images, splits.mean, splits.std).argmax(1),
                             splits.test_labels))
    return {"setup_seconds": setup_s, "train_images": len(splits.train_labels), "epochs": epochs,
            "peak_rss_train_mib": peak_train, **evaluation}


# ----------------------------------------------------------------------------- shared by both workers


def time_evaluation(device, repeats: int, images: int, warmup: Callable, run: Callable[[], float]) -> dict:
    """Inference over the test split, `repeats` times after a warm-up; the fastest pass counts."""
    warmup()
    passes = [timed(device, run) for _ in range(repeats)]
    test_acc, seconds = min(passes, key=lambda p: p[1])
    return {"test_acc": test_acc, "eval_seconds": seconds, "eval_images": images,
            "eval_img_per_s": img_per_s(images, seconds), "peak_rss_mib": peak_rss_mib()}


def worker_main(spec_path: str) -> None:
    spec = WorkerSpec(**json.loads(Path(spec_path).read_text()))
    if spec.threads:
        torch.set_num_threads(spec.threads)
    baseline = current_rss_mib()  # torch and torchvision imported, no data yet
    result = (report_worker if spec.pipeline == "report" else project_worker)(spec)
    result.update(pipeline=spec.pipeline, rss_after_imports_mib=baseline, threads=torch.get_num_threads())
    train_s = sum(e["seconds"] for e in result["epochs"])
    result["train_img_per_s"] = img_per_s(result["train_images"] * len(result["epochs"]), train_s)
    Path(spec.out).write_text(json.dumps(result, indent=1))


def run_worker(spec: WorkerSpec) -> dict:
    """Run one pipeline in a fresh interpreter (this script, --worker) and return what it measured."""
    spec_path = Path(spec.out).with_suffix(".spec.json")
    spec_path.write_text(json.dumps(asdict(spec)))
    log(f"--- {spec.pipeline} pipeline ({spec.mode}) in a subprocess")
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)])
    if completed.returncode != 0:
        raise RuntimeError(f"the {spec.pipeline} worker failed (exit status {completed.returncode}); see above")
    return json.loads(Path(spec.out).read_text())


# ----------------------------------------------------------------------------- the compute bound


@dataclass(frozen=True)
class Lever:
    name: str
    channels_last: bool = False
    precision: str = "fp32"
    compile: bool = False


LEVERS = [Lever("fp32 contiguous"), Lever("fp32 channels_last", channels_last=True),
          Lever("bf16 autocast, channels_last", channels_last=True, precision="bf16")]
COMPILE_LEVER = Lever("torch.compile, fp32 channels_last", channels_last=True, compile=True)


def bound_step(lever: Lever, splits: Splits, cfg: TrialConfig, device) -> Callable[[], None]:
    """One training step on one fixed, pre-normalised batch: everything fit does per batch minus the data."""
    batch = Batches(splits.train_images[:cfg.batch_size], splits.train_labels[:cfg.batch_size], cfg.batch_size,
                    splits.mean, splits.std, device=device, channels_last=lever.channels_last)
    x, y = next(iter(batch))
    seed_everything(0)
    model = build_model(cfg).to(device)
    if lever.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, REPORT_RECIPE)  # fit's optimiser: Adam, foreach
    forward = torch.compile(model) if lever.compile else model
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        with autocast_context(device, lever.precision):
            loss = loss_fn(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure_lever(lever: Lever, splits: Splits, cfg: TrialConfig, device, sizes: Sizes) -> dict:
    """img/s of the repeated step: at least bound_min_steps steps and bound_min_seconds after warm-up."""
    try:
        step = bound_step(lever, splits, cfg, device)
        _, first_s = timed(device, step)  # includes compilation for the compile lever
        for _ in range(sizes.warmup_batches):
            step()
        synchronize(device)
        steps, started = 0, time.perf_counter()
        while steps < sizes.bound_min_steps or time.perf_counter() - started < sizes.bound_min_seconds:
            step()
            steps += 1
        synchronize(device)
        seconds = time.perf_counter() - started
    except Exception as exc:  # torch.compile needs a working compiler tool chain; say so, do not abort
        return {"lever": lever.name, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"}
    return {"lever": lever.name, "img_per_s": img_per_s(steps * cfg.batch_size, seconds), "steps": steps,
            "seconds": seconds, "first_step_seconds": first_s}


def compute_bound(splits: Splits, device, sizes: Sizes, with_compile: bool) -> list[dict]:
    levers = LEVERS + ([COMPILE_LEVER] if with_compile else [])
    results = []
    for lever in levers:
        log(f"--- compute bound: {lever.name}")
        results.append(measure_lever(lever, splits, FINAL_CONFIG, device, sizes))
    return results


# ----------------------------------------------------------------------------- the two modes


@dataclass
class Context:
    """What the parent prepares once for every measurement of a run."""

    args: argparse.Namespace
    device: torch.device
    sizes: Sizes
    splits: Splits
    root: Path
    split: str
    workdir: Path
    torchvision_root: Path

    def spec(self, pipeline: str, **changes) -> WorkerSpec:
        base = WorkerSpec(pipeline=pipeline, mode=self.args.mode, out=str(self.workdir / f"{pipeline}.json"),
                          data_root=str(self.root), split=self.split, torchvision_root=str(self.torchvision_root),
                          mean=self.splits.mean, std=self.splits.std, device=str(self.device), seed=self.args.seed,
                          epochs=1, threads=self.args.threads, num_workers=self.args.num_workers,
                          sizes=asdict(self.sizes), recipe=self.args.recipe)
        return replace(base, **changes)


def prepare(args: argparse.Namespace, workdir: Path) -> Context:
    device = pick_device(args.device)
    sizes = QUICK if args.quick else FULL
    root, split = data_location(args.data, args.split)
    data = load_emnist(root, split, download=False)
    splits = make_splits(data, args.seed, sizes.train_limit, sizes.val_limit, sizes.test_limit)
    tv_root = build_torchvision_root(data.files, workdir / "torchvision")
    return Context(args=args, device=device, sizes=sizes, splits=splits, root=root, split=split, workdir=workdir,
                   torchvision_root=tv_root)


def throughput_mode(ctx: Context) -> dict:
    epochs = ctx.args.epochs or 1
    report = run_worker(ctx.spec("report", epochs=epochs))
    project = run_worker(ctx.spec("project", epochs=epochs))
    bound = compute_bound(ctx.splits, ctx.device, ctx.sizes, ctx.args.compile)
    matching = "fp32 channels_last" if uses_channels_last(REPORT_RECIPE, ctx.device) else "fp32 contiguous"
    bound_img_s = next((b["img_per_s"] for b in bound if b["lever"] == matching and "img_per_s" in b), float("nan"))
    ratios = {
        "project/report training": project["train_img_per_s"] / report["train_img_per_s"],
        f"project training/compute bound ({matching})": project["train_img_per_s"] / bound_img_s,
        f"project train steps only/compute bound ({matching})": _train_steps_img_per_s(project) / bound_img_s,
        "project/report evaluation": project["eval_img_per_s"] / report["eval_img_per_s"],
    }
    return {"report": report, "project": project, "compute_bound": bound, "ratios": ratios}


def _train_steps_img_per_s(result: dict) -> float:
    seconds = sum(e["train_seconds"] for e in result["epochs"])
    return img_per_s(result["train_images"] * len(result["epochs"]), seconds)


def time_to_accuracy_mode(ctx: Context) -> dict:
    recipe_cfg, _ = RECIPES[ctx.args.recipe]
    report_epochs = 1 if ctx.args.quick else (ctx.args.epochs or FINAL_CONFIG.epochs)
    report = run_worker(ctx.spec("report", epochs=report_epochs))
    target, report_s = report["test_acc"], sum(e["seconds"] for e in report["epochs"])
    project_epochs = 1 if ctx.args.quick else recipe_cfg.epochs
    project = run_worker(ctx.spec("project", epochs=project_epochs, target_acc=target))
    reached = next((e for e in project["epochs"] if e["test_acc"] >= target), None)
    return {"report": report, "project": project, "target_acc": target, "report_seconds": report_s,
            "reached": reached is not None,
            "project_seconds_to_target": reached["elapsed_seconds"] if reached else None,
            "project_epochs_to_target": reached["epoch"] if reached else None,
            "speedup": report_s / reached["elapsed_seconds"] if reached else None}


# ----------------------------------------------------------------------------- output


def _table(rows: list[list], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, floatfmt=".1f", disable_numparse=True)


def _f(value, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def print_header(ctx: Context, info: dict) -> None:
    s, cfg = ctx.splits, FINAL_CONFIG
    print(f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
          f"bf16 hardware: {info['bf16_hardware']}" + (f", GPU {info['gpu']}" if "gpu" in info else ""))
    print(f"         torch {info['torch']}, torchvision {info['torchvision']}, python {info['python']}, "
          f"threads {info['threads']}, device {info['device']}, load average {_f(info['load_average_1m'], '.2f')}")
    if info["load_average_1m"] and info["load_average_1m"] > 0.5 * (info["usable_cores"] or 1):
        print("         WARNING: the machine is busy; these numbers are not a clean measurement")
    print(f"Data:    {s.provenance['dataset']} (sha256 {s.provenance['checksum'][:12]}), "
          + ", ".join(f"{k} {v:,}" for k, v in s.sizes().items())
          + (" (--quick subset)" if ctx.args.quick else ""))
    print(f"Model:   {cfg.arch} ({cfg.c1}, {cfg.c2}, {cfg.hidden}, {cfg.dropout}), batch {cfg.batch_size}, "
          f"Adam lr {cfg.lr:g}; DataLoader num_workers={ctx.args.num_workers}\n")


def _peak_cells(r: dict) -> list:
    return [_f(r["peak_rss_train_mib"], ".0f"), _f(r["peak_rss_train_mib"] - (r["rss_after_imports_mib"] or 0), ".0f")]


def print_throughput(ctx: Context, res: dict) -> None:
    rep, proj = res["report"], res["project"]
    epochs = len(proj["epochs"])
    print(f"Training, {epochs} epoch(s) timed after a warm-up; an epoch = train steps + per-epoch validation")
    rows = [[name, _f(r["train_img_per_s"], ".0f"), _f(sum(e["seconds"] for e in r["epochs"])),
             _f(sum(e["train_seconds"] for e in r["epochs"])), _f(sum(e["val_seconds"] for e in r["epochs"])),
             _f(r["epochs"][-1]["val_acc"], ".2f"), *_peak_cells(r)]
            for name, r in (("report (torchvision + DataLoader)", rep), ("project (fit)", proj))]
    print(_table(rows, ["pipeline", "img/s", "total s", "train s", "val s", "val acc %", "peak RSS MiB",
                        "RSS above imports MiB"]))
    print("  project 'train s' = fit's epoch time minus its validation timed separately; peak RSS is the main "
          "process only" + (" (DataLoader workers not included)" if ctx.args.num_workers else "") + "\n")

    print(f"Compute bound: forward + backward + Adam on one batch of {FINAL_CONFIG.batch_size} already in memory")
    base = next((b.get("img_per_s") for b in res["compute_bound"] if b["lever"] == "fp32 contiguous"), None)
    rows = [[b["lever"], _f(b.get("img_per_s"), ".0f"),
             _f(b["img_per_s"] / base, ".2f") + "x" if base and "img_per_s" in b else "-",
             _f(b.get("first_step_seconds"), ".2f"), b.get("error", "")] for b in res["compute_bound"]]
    print(_table(rows, ["lever", "img/s", "vs fp32 contiguous", "first step s", "error"]) + "\n")

    print("Evaluation: whole test split, inference only")
    rows = [[name, _f(r["eval_img_per_s"], ".0f"), _f(r["eval_seconds"], ".2f"), _f(r["test_acc"], ".2f")]
            for name, r in (("report (DataLoader, batch 290, no_grad)", rep),
                            ("project (predict_logits, batch 2048, inference_mode)", proj))]
    print(_table(rows, ["pipeline", "img/s", "seconds", "test acc %"]) + "\n")

    print("Ratios")
    print(_table([[k, f"{v:.2f}x"] for k, v in res["ratios"].items()], ["", "ratio"]))


def print_time_to_accuracy(ctx: Context, res: dict) -> None:
    rep, proj = res["report"], res["project"]
    print(f"Time to accuracy: report recipe on the report pipeline vs recipe '{ctx.args.recipe}' on fit")
    rows = [["report pipeline, report recipe", len(rep["epochs"]), _f(res["report_seconds"]),
             _f(res["target_acc"], ".2f"), _peak_cells(rep)[0]],
            [f"project pipeline, recipe '{ctx.args.recipe}'", res["project_epochs_to_target"] or "not reached",
             _f(res["project_seconds_to_target"]),
             _f(max((e["test_acc"] for e in proj["epochs"]), default=None), ".2f"), _peak_cells(proj)[0]]]
    print(_table(rows, ["run", "epochs", "wall s (train + validation)", "test acc %", "peak RSS MiB"]))
    if res["reached"]:
        print(f"\nTarget A = {res['target_acc']:.2f}% reached after {res['project_epochs_to_target']} epoch(s): "
              f"T / time-to-A = {res['report_seconds']:.1f} / {res['project_seconds_to_target']:.1f} s "
              f"= {res['speedup']:.2f}x")
    else:
        print(f"\nTarget A = {res['target_acc']:.2f}% NOT reached within {len(proj['epochs'])} epoch(s) "
              "of the project recipe; no speed-up to report")


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("throughput", "time-to-accuracy"), default="throughput")
    p.add_argument("--data", help="data folder (default: EMNIST_DATA, else data/)")
    p.add_argument("--split", help="split name (default: EMNIST_SPLIT, else balanced)")
    p.add_argument("--epochs", type=int, help="throughput: epochs timed per pipeline (default 1); "
                                              "time-to-accuracy: epochs of the report run (default 20)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads in every process (default: torch's)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the report pipeline")
    p.add_argument("--compile", action="store_true", help="also time torch.compile in the compute bound (slow)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="report",
                   help="time-to-accuracy: the recipe fit trains with")
    p.add_argument("--device", help="override the device (default: emnist_utils.training.pick_device)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny run to check the script works (not a measurement)")
    p.add_argument("--json", type=Path, help="also write all results to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="emnist-benchmark-") as tmp:
        ctx = prepare(args, Path(tmp))
        info = machine_info(ctx.device)
        if args.mode == "throughput":
            results = throughput_mode(ctx)
        else:
            results = time_to_accuracy_mode(ctx)
    print_header(ctx, info)
    (print_throughput if args.mode == "throughput" else print_time_to_accuracy)(ctx, results)
    if args.json:
        payload = {"mode": args.mode, "machine": info, "settings": {k: str(v) if isinstance(v, Path) else v
                                                                    for k, v in vars(args).items()},
                   "data": {**ctx.splits.provenance, **ctx.splits.sizes()}, "results": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
