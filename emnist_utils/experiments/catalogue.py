"""Which runs and baselines each notebook needs, from the same definitions the notebooks use, so that the
main job can plan and train them all before executing a single notebook."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import beyond
from .baselines import BASELINES
from .profiles import Profile
from .recipes import NAMED_RUNS
from .spec import RunSpec
from .studies import COMPARISON_STUDIES, unique_specs
from .trials import TABLE_1_1, TABLE_1_2

Chooser = Callable[[Sequence[RunSpec]], RunSpec | None]


def notebook_runs(profile: Profile, chosen: Chooser | None = None) -> dict[str, list[RunSpec]]:
    """{notebook stem: unbound run specs}. `chosen` picks notebook 05's final candidate once its candidates
    are trained (None while they are not)."""
    return {
        "02_architecture1_trials": [t.spec for t in TABLE_1_1],
        "03_architecture2_trials": [t.spec for t in TABLE_1_2],
        "04_final_model": [t.spec for t in TABLE_1_2] + [NAMED_RUNS["fast"], NAMED_RUNS["cpu"]],
        "05_beyond_the_report": unique_specs(beyond.specs(profile, chosen)),
        "06_baselines_and_depth": unique_specs(
            [s for study in (*COMPARISON_STUDIES, beyond.LEAN_DROPOUT_STUDY) for s in study.specs(profile)]
        ),
    }


def notebook_baselines(profile: Profile) -> dict[str, list[str]]:
    return {"06_baselines_and_depth": list(BASELINES)}
