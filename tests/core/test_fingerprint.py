"""emnist_utils.core.fingerprint: static fingerprints of the code a result depends on, on an edited copy of the
package: every edit that can change a result changes them (and `changed` names it), comments, docstrings and
unrelated code do not."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emnist_utils.core.fingerprint import (
    PACKAGE_DIR,
    Fingerprinter,
    canonical_dump,
    changed,
    code_fingerprint,
    combine,
)
from emnist_utils.experiments.spec import TRAINING_ROOTS, TRAINING_STOP

GELU = [("emnist_utils.core.variants", "GELUStack")]
ARCH2 = [("emnist_utils.core.models", "Architecture2")]
COMPACT = [("emnist_utils.core.variants", "CompactNet")]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A copy of the package as it is."""
    target = tmp_path_factory.mktemp("pristine") / "emnist_utils"
    shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture
def package(pristine, tmp_path):
    """A fresh copy of the package to edit."""
    target = tmp_path / "emnist_utils"
    shutil.copytree(pristine, target)
    return target


def edit(package: Path, module: str, old: str, new: str) -> None:
    """Replace the one occurrence of `old` in the module's source (failing if it is not there exactly once)."""
    path = package.joinpath(*module.split(".")[1:]).with_suffix(".py")
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new))


def fingerprints(package: Path) -> dict[str, dict[str, str]]:
    f = Fingerprinter(package)
    return {
        "training": f.fingerprint(TRAINING_ROOTS, TRAINING_STOP),
        "gelu": f.fingerprint(GELU),
        "arch2": f.fingerprint(ARCH2),
        "compact": f.fingerprint(COMPACT),
    }


@pytest.fixture(scope="module")
def before(pristine):
    return fingerprints(pristine)


def test_a_copy_fingerprints_like_the_installed_package(before):
    assert before["training"] == code_fingerprint(TRAINING_ROOTS, TRAINING_STOP)
    assert before["gelu"] == code_fingerprint(GELU)
    assert set(before["gelu"]) == {
        "emnist_utils.core.variants.GELUStack",
        "emnist_utils.core.variants.ConvStack",
        "emnist_utils.core.variants.ACTIVATIONS",
        "emnist_utils.core.models.IMAGE_SIZE",
    }


def test_the_training_fingerprint_reaches_what_changes_a_run(before):
    names = set(before["training"])
    for name in (
        "core.training.fit",
        "core.training.Recipe",
        "core.training.train_one_epoch",
        "core.training.make_loss",
        "core.training.make_ema",
        "core.training.recompute_batchnorm",
        "core.splits.normalise",
        "core.splits.Batches",
        "core.splits.VALIDATION_FRACTION",
        "core.splits.sampling_weights",
        "core.augment.random_affine",
        "core.augment.random_erasing",
        "core.evaluation.predict_logits",
        "core.evaluation.choose_adjustment",
        "experiments.store.train_run",
    ):
        assert f"emnist_utils.{name}" in names, name
    # the stop list is neither hashed nor followed: no architecture is part of the shared fingerprint
    assert not names & TRAINING_STOP
    assert not any(n.startswith(("emnist_utils.core.variants", "emnist_utils.core.models")) for n in names)


# (module, old text, new text, the definition that changes) - each edit can change a trained result
RESULT_EDITS = [
    (
        "emnist_utils.core.variants",
        '"gelu": nn.GELU,',
        '"gelu": lambda: nn.GELU(approximate="tanh"),',
        "emnist_utils.core.variants.ACTIVATIONS",
    ),
    (
        "emnist_utils.core.training",
        "    seed_everything(seed)\n    channels_last",
        "    seed_everything(seed + 1)\n    channels_last",
        "emnist_utils.core.training.fit",
    ),
    (
        "emnist_utils.core.training",
        'optimizer: str = "adam"',
        'optimizer: str = "adamw"',
        "emnist_utils.core.training.Recipe",
    ),
    ("emnist_utils.core.splits", ".add_(-mean / std)", ".add_(-mean * std)", "emnist_utils.core.splits.normalise"),
    (
        "emnist_utils.core.splits",
        "VALIDATION_FRACTION = 12_800 / 112_800",
        "VALIDATION_FRACTION = 12_000 / 112_800",
        "emnist_utils.core.splits.VALIDATION_FRACTION",
    ),
    (
        "emnist_utils.core.augment",
        "max_degrees: float = 10.0",
        "max_degrees: float = 15.0",
        "emnist_utils.core.augment.random_affine",
    ),
    ("emnist_utils.core.augment", 'mode="bilinear"', 'mode="nearest"', "emnist_utils.core.augment.random_affine"),
]


@pytest.mark.parametrize("module,old,new,definition", RESULT_EDITS, ids=[e[3].split(".", 2)[2] for e in RESULT_EDITS])
def test_an_edit_that_can_change_a_result_changes_the_fingerprint(package, before, module, old, new, definition):
    edit(package, module, old, new)
    after = fingerprints(package)
    which = "gelu" if "ACTIVATIONS" in definition else "training"
    assert combine(after[which]) != combine(before[which])
    assert changed(before[which], after[which]) == [definition]
    assert after["arch2"] == before["arch2"]
    if which == "gelu":
        assert after["training"] == before["training"]


TEXT_EDITS = [
    (
        "emnist_utils.core.training",
        "    seed_everything(seed)\n    channels_last",
        "    seed_everything(seed)  # seeded first\n    # the layout\n    channels_last",
    ),
    (
        "emnist_utils.core.training",
        '    """Train `model` in place as `recipe` says;',
        '    """Train the model in place exactly as `recipe` says;',
    ),
    ("emnist_utils.core.training", '"""One training loop for every model:', '"""The one training loop for all models:'),
    (
        "emnist_utils.core.splits",
        "def normalise(images: torch.Tensor, mean: float, std: float, *, "
        'channels_last: bool = False) -> torch.Tensor:\n    """uint8 images',
        "def normalise(images: torch.Tensor, mean: float, std: float, *, "
        'channels_last: bool = False) -> torch.Tensor:\n    """Unsigned 8-bit images',
    ),
    ("emnist_utils.core.variants", '    "gelu": nn.GELU,', '    "gelu": nn.GELU,  # smooth'),
    ("emnist_utils.core.variants", "so blocks=2 with ReLU", "so two blocks with ReLU"),
    ("emnist_utils.core.models", '    """Report sections 1.5.2 and 1.6:', '    """Sections 1.5.2 and 1.6:'),
]


@pytest.mark.parametrize(
    "module,old,new",
    TEXT_EDITS,
    ids=[
        "comment-in-fit",
        "fit-docstring",
        "module-docstring",
        "normalise-docstring",
        "comment-in-ACTIVATIONS",
        "ConvStack-docstring",
        "Architecture2-docstring",
    ],
)
def test_comments_and_docstrings_do_not_change_the_fingerprint(package, before, module, old, new):
    edit(package, module, old, new)
    assert fingerprints(package) == before


def test_an_unrelated_architecture_does_not_change_another_ones_fingerprint(package, before):
    edit(
        package,
        "emnist_utils.core.variants",
        "hidden: int = 192, dropout: float = 0.3",
        "hidden: int = 192, dropout: float = 0.4",
    )
    after = fingerprints(package)
    assert changed(before["compact"], after["compact"]) == ["emnist_utils.core.variants.CompactNet"]
    assert after["arch2"] == before["arch2"] and after["gelu"] == before["gelu"]
    assert after["training"] == before["training"]


def test_a_shared_helper_changes_the_architectures_that_use_it(package, before):
    edit(package, "emnist_utils.core.variants", "nn.ReLU(inplace=True)]", "nn.SiLU(inplace=True)]")
    after = fingerprints(package)
    assert changed(before["compact"], after["compact"]) == ["emnist_utils.core.variants.conv_bn_relu"]
    assert after["gelu"] == before["gelu"] and after["arch2"] == before["arch2"]
    # a base class's edit reaches its subclasses
    edit(
        package,
        "emnist_utils.core.variants",
        "            channels, size = out, size // 2",
        "            channels, size = out, size // 2 + 0",
    )
    assert changed(before["gelu"], fingerprints(package)["gelu"]) == ["emnist_utils.core.variants.ConvStack"]


def test_changed_names_added_and_removed_definitions():
    assert changed({"a": "1", "b": "2"}, {"a": "1", "b": "2"}) == []
    assert changed({"a": "1", "b": "2"}, {"a": "3", "b": "2"}) == ["a"]
    assert changed({"a": "1"}, {"a": "1", "c": "4"}) == ["c"]
    assert changed({"b": "2", "a": "1"}, {"a": "9"}) == ["a", "b"]


def test_combine_is_order_independent_and_sensitive():
    assert combine({"a": "1", "b": "2"}) == combine({"b": "2", "a": "1"})
    assert combine({"a": "1", "b": "2"}) != combine({"a": "1", "b": "3"})
    assert len(combine({"a": "1"})) == 16


def test_unknown_roots_are_refused(package):
    with pytest.raises(KeyError):
        Fingerprinter(package).fingerprint([("emnist_utils.core.variants", "NoSuchNet")])
    with pytest.raises(KeyError):
        Fingerprinter(package).fingerprint([("emnist_utils.core.nowhere", "X")])


def test_a_new_module_level_name_used_by_a_definition_is_followed(package, before):
    edit(
        package,
        "emnist_utils.core.variants",
        "class ConvStack(nn.Module):",
        "KERNEL = 5\n\n\nclass ConvStack(nn.Module):",
    )
    edit(package, "emnist_utils.core.variants", "(c2, 5)", "(c2, KERNEL)")
    after = fingerprints(package)
    assert changed(before["gelu"], after["gelu"]) == [
        "emnist_utils.core.variants.ConvStack",
        "emnist_utils.core.variants.KERNEL",
    ]
    base = after["gelu"]
    edit(package, "emnist_utils.core.variants", "KERNEL = 5", "KERNEL = 3")
    assert changed(base, fingerprints(package)["gelu"]) == ["emnist_utils.core.variants.KERNEL"]


# ----------------------------------------------------------------------------- the same under every Python


def _package_trees():
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        yield path, ast.parse(path.read_text())


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="reproduces Python 3.11's ast.dump")
def test_canonical_dump_reproduces_python_3_11_ast_dump_for_the_whole_package():
    for path, tree in _package_trees():
        assert canonical_dump(tree) == ast.dump(tree, include_attributes=False), path


def _as_newer_python(tree: ast.AST, type_params: list) -> ast.AST:
    """The tree as Python 3.12+ builds it: functions and classes carry a `type_params` field."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            base = type(node)
            fields = base._fields if "type_params" in base._fields else (*base._fields, "type_params")
            node.__class__ = type(base.__name__, (base,), {"_fields": fields})
            node.type_params = list(type_params)
    return tree


def test_an_empty_type_params_field_of_newer_pythons_leaves_the_dump_unchanged():
    source = "class A(B):\n    def f(self, x=None):\n        return [x, None]\n\nasync def g():\n    pass\n"
    plain = canonical_dump(ast.parse(source))
    assert canonical_dump(_as_newer_python(ast.parse(source), [])) == plain
    assert canonical_dump(_as_newer_python(ast.parse(source), [ast.Name(id="T")])) != plain  # real generics count


def test_the_literal_none_is_kept_and_absent_optional_fields_are_left_out():
    assert canonical_dump(ast.parse("x = None")) != canonical_dump(ast.parse("x = 0"))
    assert "returns" not in canonical_dump(ast.parse("def f(): pass"))
    assert "returns=Name" in canonical_dump(ast.parse("def f() -> int: pass"))


def _other_pythons() -> list[str]:
    found = {shutil.which(f"python3.{minor}") for minor in range(12, 16)}
    found |= {str(p) for p in Path.home().glob(".pyenv/versions/3.1[2-9]*/bin/python")}
    return sorted(p for p in found if p and "/shims/" not in p)  # a pyenv shim may point to no interpreter


FINGERPRINT_ELSEWHERE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("fp", sys.argv[1])
fp = importlib.util.module_from_spec(spec)
sys.modules["fp"] = fp
spec.loader.exec_module(fp)
roots = json.loads(sys.argv[3])
print(fp.combine(fp.Fingerprinter(fp.Path(sys.argv[2])).fingerprint([tuple(r) for r in roots[0]], frozenset(roots[1]))))
"""


@pytest.mark.skipif(not _other_pythons(), reason="no other Python 3.12+ interpreter on this machine")
@pytest.mark.parametrize("python", _other_pythons())
def test_another_python_version_computes_the_same_fingerprint(python):
    roots = json.dumps([TRAINING_ROOTS, sorted(TRAINING_STOP)])
    result = subprocess.run(
        [python, "-c", FINGERPRINT_ELSEWHERE, str(PACKAGE_DIR / "core" / "fingerprint.py"), str(PACKAGE_DIR), roots],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == combine(code_fingerprint(TRAINING_ROOTS, TRAINING_STOP))
