"""Named runs for the command line and notebook 04: `report`, `fast`, `cpu` and `best`.

    python -m emnist_utils train --recipe cpu

- `report`: the report's final run (Architecture 2 trial 1, Adam 1e-3, batch 290, 20 epochs).
- `fast`: the report's model in 4 epochs: AdamW with OneCycle to 3e-3, label smoothing 0.1, batch 256, square-root
  class-aware sampling and a short weight average; what `benchmarks/benchmark_time_to_accuracy.py` times.
- `cpu`: a lean CNN recipe sized to train on a 2-core CPU (2 threads) in under 20 minutes.
- `best`: notebook 05's final recipe (lean CNN, 30 epochs, augmentation, weight average, class-aware sampling).
"""

from __future__ import annotations

from .beyond import FINAL_SPEC, LEAN_RECIPE
from .spec import RunSpec
from .trials import REPORT_FINAL

NAMED_RUNS: dict[str, RunSpec] = {
    "report": REPORT_FINAL,
    "fast": REPORT_FINAL.with_(name="report-fast", recipe=LEAN_RECIPE.with_(epochs=4, augment="none", ema_decay=0.99)),
    "cpu": FINAL_SPEC.with_(name="lean-cpu", recipe=FINAL_SPEC.recipe.with_(epochs=15)),
    "best": FINAL_SPEC,
}
