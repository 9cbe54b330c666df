"""What every benchmark here measures with: timing with warm-up and repeats (mean ± std), device synchronisation,
peak memory, a description of the machine (with a warning when it is busy), the options every script shares,
running one part of a benchmark in a fresh process, and writing the results (text + JSON).

The benchmarks are scripts, run as files from the project root (`.venv/bin/python benchmarks/<script>.py`):
Python then puts benchmarks/ first on the module path, so they `import measure` (and `import report_pipeline`)
as sibling modules; `emnist_utils` comes from the virtual environment, like everywhere else in the project.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from emnist_utils.core.training import available_device
from emnist_utils.experiments.plan import machine_description

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- timing


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued accelerator work, so that a timer stopped afterwards measures the work, not its launch."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable, device: torch.device | str | None = None):
    """(fn(), wall seconds), synchronised on both sides."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - started


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


@dataclass
class Timing:
    """Wall seconds of repeated runs of the same work, each processing `items` images."""

    seconds: list[float]
    items: int

    @property
    def rates(self) -> list[float]:
        return [self.items / s if s > 0 else math.nan for s in self.seconds]

    @property
    def rate(self) -> tuple[float, float]:
        """Images per second: mean and standard deviation over the repeats."""
        return mean_std(self.rates)

    def as_dict(self) -> dict:
        mean, std = self.rate
        return {
            "items": self.items,
            "seconds": self.seconds,
            "img_per_s": self.rates,
            "img_per_s_mean": mean,
            "img_per_s_std": std,
        }


def repeat(fn: Callable, *, items: int, repeats: int, warmup: int = 1, device=None) -> Timing:
    """Time `repeats` calls of `fn` after `warmup` untimed ones (one-time costs: allocator, oneDNN primitives,
    thread pool, compilation)."""
    for _ in range(warmup):
        fn()
    return Timing([timed(fn, device)[1] for _ in range(repeats)], items)


def format_rate(mean: float, std: float | None = None) -> str:
    """'2,235 ± 31' (images per second)."""
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:,.0f}" + (f" ± {std:,.0f}" if std is not None and math.isfinite(std) else "")


# ----------------------------------------------------------------------------- memory


def _proc_status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float | None:
    """Peak resident memory of this process (VmHWM). Not ru_maxrss: on Linux that survives fork + exec, so a
    child process would report at least its parent's peak."""
    return _proc_status_mib("VmHWM")


def current_rss_mib() -> float | None:
    return _proc_status_mib("VmRSS")


def peak_memory(device: torch.device | str) -> dict:
    """This process's peak resident memory and, on CUDA, the peak memory torch allocated on the GPU."""
    device = torch.device(device)
    out = {"peak_rss_mib": peak_rss_mib()}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# ----------------------------------------------------------------------------- the machine


def machine(device: torch.device | str) -> dict:
    """What the numbers are measured on. Call it first: its load average is the machine's before the benchmark
    adds its own work."""
    device = torch.device(device)
    cpuinfo: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpuinfo.setdefault(key.strip(), value.strip())  # the first processor's entry
    except OSError:
        pass
    flags = set(cpuinfo.get("flags", "").split())
    info = {
        "description": machine_description(),
        "cpu": cpuinfo.get("model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "bf16_hardware": sorted(flags & {"avx512_bf16", "amx_bf16"}) or "none (bf16 is emulated)",
        "torch": torch.__version__,
        "torchvision": importlib.metadata.version("torchvision"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def busy_warning(info: dict) -> str | None:
    """A warning when other work was running as the benchmark started (1-minute load above half the cores)."""
    load, cores = info.get("load_average_1m"), info.get("usable_cores") or 1
    if load is not None and load > 0.5 * cores:
        return (
            f"WARNING: the machine is busy (load average {load:.2f} on {cores} cores); "
            "these numbers are not a clean measurement"
        )
    return None


def describe_machine(info: dict) -> str:
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"bf16 hardware: {info['bf16_hardware']}" + (f", GPU {info['gpu']}" if "gpu" in info else ""),
        f"         torch {info['torch']}, torchvision {info['torchvision']}, python {info['python']}, "
        f"threads {info['threads']}, device {info['device']}, load average {info['load_average_1m']:.2f}",
    ]
    warning = busy_warning(info)
    if warning:
        lines.append("         " + warning)
    return "\n".join(lines)


def describe_data(splits, note: str = "") -> str:
    """One line: which data (its checksum) and how much of each part was used."""
    sizes = ", ".join(f"{k} {v:,}" for k, v in splits.sizes().items())
    return f"Data:    {splits.provenance['dataset']} (sha256 {splits.provenance['checksum'][:12]}), {sizes}" + note


# ----------------------------------------------------------------------------- the shared command line


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parser(doc: str, *, all_cores: bool = False) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes; a script adds its own. `all_cores`: --threads defaults to
    every usable core instead of torch's own choice."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data folder (default: EMNIST_DATA, else data/)")
    p.add_argument("--split", help="split name (default: EMNIST_SPLIT, else the one split present)")
    p.add_argument("--device", help="cpu, cuda, mps (default: emnist_utils' pick_device)")
    p.add_argument(
        "--threads",
        type=int,
        default=usable_cores() if all_cores else None,
        help="torch threads in every process (default: "
        + ("all usable cores, here %(default)s)" if all_cores else "torch's own)"),
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny data, 1 epoch or a few steps: checks that the script works; the numbers mean nothing",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"folder for the results (default: {RESULTS_DIR})")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # set when the script runs one part in a fresh process
    return p


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def interleaved_options(p: argparse.ArgumentParser, what: str, *, rounds: int, steps: int, warmup: int) -> None:
    """--rounds/--steps/--warmup of a benchmark that times several `what`s in turn (one round = each once)."""
    p.add_argument(
        "--rounds", type=int, default=rounds, help=f"timed rounds over all {what}s (default {rounds}; --quick: 2)"
    )
    p.add_argument(
        "--steps", type=int, default=steps, help=f"training steps per {what} per round (default {steps}; --quick: 1)"
    )
    p.add_argument(
        "--warmup", type=int, default=warmup, help=f"untimed steps per {what} first (default {warmup}; --quick: 1)"
    )


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, applying --quick to the interleaved options where the script has them, and refuse empty timings."""
    args = p.parse_args(argv)
    if hasattr(args, "rounds"):
        if args.quick:
            args.rounds, args.steps, args.warmup = 2, 1, 1
        if min(args.rounds, args.steps) < 1:
            p.error("--rounds and --steps must be at least 1")
    return args


def start(args: argparse.Namespace) -> tuple[torch.device, dict]:
    """Threads, device (refused with one line if this machine lacks it, as in every command) and the machine's
    description for a benchmark run; says when the machine is busy."""
    set_threads(args.threads)
    device = available_device(args.device)
    info = machine(device)
    if busy_warning(info):
        log(busy_warning(info))
    return device, info


# ----------------------------------------------------------------------------- parts in their own process


def run_in_subprocess(script: str | Path, spec: dict, workdir: Path, name: str) -> dict:
    """Run `script --worker SPEC` in a fresh interpreter and return the JSON it writes to spec["out"], so that what
    it measures (peak memory above all) is its own and not shared with the parent or another part."""
    spec = {**spec, "out": str(workdir / f"{name}.result.json")}
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log(f"--- {name} in a subprocess")
    completed = subprocess.run([sys.executable, str(Path(script).resolve()), "--worker", str(spec_path)])
    if completed.returncode != 0:
        raise RuntimeError(f"the {name} subprocess failed (exit status {completed.returncode}); see above")
    return json.loads(Path(spec["out"]).read_text())


def worker_spec(path: str) -> dict:
    return json.loads(Path(path).read_text())


def finish_worker(spec: dict, result: dict) -> None:
    Path(spec["out"]).write_text(json.dumps(result, indent=1))


# ----------------------------------------------------------------------------- results


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no nan
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def result_stem(benchmark: str, device: torch.device | str, quick: bool) -> str:
    """<benchmark>_<device type>, with _quick for --quick runs (which never replace a measurement)."""
    return f"{benchmark}_{torch.device(device).type}" + ("_quick" if quick else "")


def write_results(out: Path, stem: str, text: str, payload: dict, extra: dict[str, str] | None = None) -> list[Path]:
    """Write `text` to <out>/<stem>.txt, `payload` to <out>/<stem>.json and each {suffix: content} of `extra` to
    <out>/<stem><suffix>; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{stem}.txt", out / f"{stem}.json"]
    written[0].write_text(text if text.endswith("\n") else text + "\n")
    written[1].write_text(json.dumps(_plain(payload), indent=1) + "\n")
    for suffix, content in (extra or {}).items():
        written.append(out / f"{stem}{suffix}")
        written[-1].write_text(content)
    return written


def settings(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "worker"}


def publish(
    benchmark: str,
    args: argparse.Namespace,
    device: torch.device,
    info: dict,
    text: str,
    data: dict,
    results,
    extra: dict[str, str] | None = None,
) -> None:
    """Print a benchmark's report and write it with its JSON (machine, settings, data, results) under --out."""
    print(text)
    payload = {"benchmark": benchmark, "machine": info, "settings": settings(args), "data": data, "results": results}
    stem = result_stem(f"benchmark_{benchmark}", device, args.quick)
    for path in write_results(args.out, stem, text, payload, extra):
        print(f"wrote {path}")
