"""The bad-input catalogue (issue 4): every mistake a user can make with recipes, CLI arguments, data files, weights
and checkpoints ends with exit status 2, exactly one line on stderr that names the fix, no traceback, and no run
directory that looks complete (no `report.json`, `status.json` not "complete").

Each case is `(id, build(tmp) -> argv, expected fragment of the message)`. They run in-process through
`distill.cli.main` (seconds in all); one runs as a real child process to check the real stderr. A hypothesis property
test feeds random documents to `distill.config.validate`: a valid `Recipe` or a `DistillError`, nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import RECIPES, TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from distill.cli import main
from distill.config import Recipe
from distill.errors import DistillError
from distill.recipe import validate

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((RECIPES / "digits.yaml").read_text())
FACTORIES = '''
import torch
from torch.utils.data import TensorDataset

def _ds(n, nan=False):
    x = torch.full((n, 1, 8, 8), float("nan")) if nan else torch.rand(n, 1, 8, 8)
    return TensorDataset(x, torch.arange(n) % 10)

def empty():
    return _ds(0), _ds(10), _ds(10)

def tiny():
    return _ds(5), _ds(10), _ds(10)

def nan_inputs():
    return _ds(64, nan=True), _ds(10), _ds(10)

def one_dataset():
    return _ds(10)

def unlabelled():
    return [torch.rand(1, 8, 8)] * 10, [torch.rand(1, 8, 8)] * 10, [torch.rand(1, 8, 8)] * 10

def reads(path):
    open(path, "rb").read()
    return _ds(10), _ds(10), _ds(10)

def three_classes(**kwargs):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))

class _NoWeights(torch.nn.Module):  # 10 logits from the 64 pixels, and no weight matrix to quantize or prune
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.flatten(1)[:, :10] * self.scale

def no_weights(**kwargs):
    return _NoWeights()
'''


@pytest.fixture(scope="module", autouse=True)
def factories(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`bad_inputs_factories:<fn>` importable by recipes."""
    d = tmp_path_factory.mktemp("factories")
    (d / "bad_inputs_factories.py").write_text(FACTORIES)
    sys.path.insert(0, str(d))
    yield
    sys.path.remove(str(d))


def _sets(extra: list[str] = ()) -> list[str]:
    return [a for o in [*TINY, *extra] for a in ("--set", o)]


def run_args(tmp: Path, *, recipe: Path | None = None, sets: list[str] = (), extra: list[str] = ()) -> list[str]:
    return ["run", str(recipe or RECIPES / "digits.yaml"), "--out", str(tmp / "run"), "--no-progress",
            *_sets(list(sets)), *extra]


def recipe_file(tmp: Path, mutate: Callable[[dict[str, Any]], Any] | None = None, text: str | None = None) -> Path:
    path = tmp / "recipe.yaml"
    if text is None:
        doc = json.loads(json.dumps(BASE))
        doc = (mutate(doc) or doc) if mutate else doc
        text = yaml.safe_dump(doc)
    path.write_text(text)
    return path


def with_recipe(mutate: Callable[[dict[str, Any]], Any] | None = None, text: str | None = None, sets=()):
    return lambda tmp: run_args(tmp, recipe=recipe_file(tmp, mutate, text), sets=sets)


def with_sets(*sets: str):
    return lambda tmp: run_args(tmp, sets=list(sets))


def setk(path: str, value: Any):
    """A mutation setting a dotted key of the recipe document."""
    def mutate(doc: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node = doc
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    return mutate


def drop(key: str):
    return lambda doc: doc.pop(key)


def npz(tmp: Path, make: Callable[[Path], None]) -> list[str]:
    path = tmp / "data.npz"
    make(path)
    return run_args(tmp, sets=["data.name=npz", f"data.kwargs={{path: {path}}}"])


def good_arrays(**override: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {f"{k}_{s}": (rng.random((20, 4)).astype("float32") if k == "x" else np.arange(20) % 3)
              for s in ("train", "val", "test") for k in ("x", "y")}
    arrays.update(override)
    return {k: v for k, v in arrays.items() if v is not None}


def npz_case(**override: Any):
    return lambda tmp: npz(tmp, lambda p: np.savez(p, **good_arrays(**override)))


def npz_bytes(cut: float | None = None, data: bytes | None = None):
    def make(p: Path) -> None:
        np.savez(p, **good_arrays())
        raw = p.read_bytes()
        p.write_bytes(data if data is not None else raw[: int(len(raw) * cut)])
    return lambda tmp: npz(tmp, make)


def weights(make: Callable[[Path], Path]):
    def build(tmp: Path) -> list[str]:
        path = make(tmp)
        return run_args(tmp, sets=[f"teacher.weights={path}"])
    return build


def teacher_state(hidden: int = 32) -> dict[str, torch.Tensor]:
    from distill.models import create_model

    model = create_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[hidden])
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def st_file(tmp: Path, *, cut: float | None = None, hidden: int = 32, garbage: bool = False) -> Path:
    path = tmp / "teacher.safetensors"
    save_file(teacher_state(hidden), str(path))
    raw = path.read_bytes()
    if garbage:
        path.write_bytes(b"\x00\x01not a safetensors file" * 10)
    elif cut is not None:
        path.write_bytes(raw[: int(len(raw) * cut)])
    return path


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def evil_pth(tmp: Path) -> Path:
    path = tmp / "teacher.pth"
    torch.save({"net.1.weight": Evil(tmp / "pwned")}, path)
    return path


def existing_out(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "notes.txt").write_text("mine")
    return run_args(tmp)


def under_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["run", str(RECIPES / "digits.yaml"), "--out", str(tmp / "afile" / "run"), "--no-progress", *_sets()]


def started_run(tmp: Path, config: str | None = None) -> None:
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    if config is None:
        from distill.recipe import dump_recipe, load_recipe

        config = dump_recipe(load_recipe(RECIPES / "digits.yaml", list(TINY)))
    (tmp / "run" / "config.yaml").write_text(config)


def resume_other_recipe(tmp: Path) -> list[str]:
    started_run(tmp)
    return run_args(tmp, sets=["distill.temperature=3"], extra=["--resume"])


def resume_corrupt_config(tmp: Path) -> list[str]:
    started_run(tmp, config="name: [unclosed\n")
    return run_args(tmp, extra=["--resume"])


def report_of(tmp: Path, content: str | None) -> list[str]:
    (tmp / "done").mkdir()
    if content is not None:
        (tmp / "done" / "report.json").write_text(content)
    return ["report", str(tmp / "done")]


def with_teacher(tmp: Path, *sets: str, extra: list[str] = ()) -> list[str]:
    """Recipe arguments with a valid teacher weights file (a cache needs a trained teacher)."""
    return run_args(tmp, sets=[f"teacher.weights={st_file(tmp)}", "teacher.kwargs.dropout=0", *sets], extra=list(extra))


def cache_dir(tmp: Path, manifest: str | None) -> Path:
    d = tmp / "cache"
    d.mkdir()
    if manifest is not None:
        (d / "manifest.json").write_text(manifest)
    return d


def cache_cmd(tmp: Path, *extra: str, sets: list[str] = ()) -> list[str]:
    return ["cache", str(RECIPES / "digits.yaml"),
            *_sets([f"teacher.weights={st_file(tmp)}", "teacher.kwargs.dropout=0", *sets]), *extra]


CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    # --- recipes ---------------------------------------------------------------------------------------------------
    ("recipe-missing", lambda t: run_args(t, recipe=t / "nope.yaml"), "not found"),
    ("recipe-bad-yaml", with_recipe(text="name: digits\nteacher: [unclosed\n"), "not valid YAML"),
    ("recipe-not-a-mapping", with_recipe(text="- a\n- b\n"), "must be a YAML mapping"),
    ("recipe-empty", with_recipe(text=""), "name: Field required"),
    ("recipe-unknown-key", with_recipe(setk("optimiser", "adam")), "unknown key"),
    ("recipe-unknown-nested-key", with_recipe(setk("train.lrr", 0.1)), "train.lrr: unknown key"),
    ("recipe-wrong-type", with_recipe(setk("data.batch_size", "lots")), "data.batch_size"),
    ("recipe-missing-section", with_recipe(drop("student")), "student.name: Field required"),
    ("recipe-temperature-zero", with_sets("distill.temperature=0"), "distill.temperature"),
    ("recipe-temperature-negative", with_sets("distill.temperature=-2"), "distill.temperature"),
    ("recipe-alpha-above-one", with_sets("distill.alpha=1.5"), "distill.alpha"),
    ("recipe-alpha-negative", with_sets("distill.alpha=-0.1"), "distill.alpha"),
    ("recipe-lr-zero", with_sets("train.lr=0"), "train.lr"),
    ("recipe-lr-nan", with_sets("train.lr=.nan"), "train.lr"),
    ("recipe-grad-accum-zero", with_sets("train.grad_accum=0"), "train.grad_accum"),
    ("recipe-grad-accum-fraction", with_sets("train.grad_accum=1.5"), "train.grad_accum"),
    ("recipe-seed-negative", with_sets("seed=-1"), "seed"),
    ("recipe-eval-temperature-zero", with_sets("eval.temperatures=[1, 0]"), "temperatures"),
    ("recipe-labelled-fraction-zero", with_sets("data.labelled_fraction=0"), "data.labelled_fraction"),
    ("recipe-bad-name", with_sets("name=../escape"), "name"),
    ("recipe-unknown-method", with_sets("distill.method=kdd"), "did you mean 'kd'"),
    ("recipe-unknown-method-option", with_sets("distill.options={temp: 3}"), "distill.options"),
    ("recipe-unknown-model", with_sets("student.name=mpl"), "did you mean 'mlp'"),
    ("recipe-bad-model-kwargs", with_sets("student.kwargs={width: 3}"), "fix the recipe's kwargs"),
    ("recipe-model-value-refused", with_sets("teacher.kwargs.dropout=2"), "fix the recipe's kwargs"),
    ("recipe-model-negative-width", with_sets("student.kwargs.hidden=[-1]"), "fix the recipe's kwargs"),
    ("recipe-unknown-dataset", with_sets("data.name=digitz"), "did you mean 'digits'"),
    ("recipe-bad-import-module", with_sets("student.name=no_such_pkg.models:net"), "PYTHONPATH"),
    ("recipe-bad-import-attr", with_sets("student.name=bad_inputs_factories:nope"), "part after ':'"),
    ("recipe-class-count-mismatch", with_sets("student.name=bad_inputs_factories:three_classes"), "same number of outputs"),
    ("recipe-batch-larger-than-data", with_sets("data.batch_size=100000"), "lower data.batch_size"),
    # --- CLI arguments ---------------------------------------------------------------------------------------------
    ("cli-set-without-equals", with_sets("distill.temperature"), "key.path=value"),
    ("cli-set-empty-key", with_sets("=3"), "empty key"),
    ("cli-set-through-a-value", with_sets("name.x=1"), "not a section"),
    ("cli-unknown-option", lambda t: run_args(t, extra=["--bogus"]), "No such option"),
    ("cli-missing-recipe", lambda t: ["run"], "Missing argument"),
    ("cli-unknown-command", lambda t: ["distil"], "No such command"),
    ("cli-out-exists", existing_out, "--overwrite"),
    ("cli-out-under-a-file", under_file, "writable --out"),
    ("cli-out-under-proc", lambda t: ["run", str(RECIPES / "digits.yaml"), "--out", "/proc/distill-run", "--no-progress",
                                      *_sets()], "writable --out"),
    ("cli-resume-nothing-there", lambda t: run_args(t, extra=["--resume"]), "run without --resume"),
    ("cli-resume-and-overwrite", lambda t: run_args(t, extra=["--resume", "--overwrite"]), "drop one"),
    ("cli-resume-other-recipe", resume_other_recipe, "distill.temperature"),
    ("cli-report-missing", lambda t: report_of(t, None), "finished run directory"),
    ("cli-report-corrupt", lambda t: report_of(t, '{"models": {'), "re-run"),
    ("cli-report-incomplete", lambda t: report_of(t, '{"models": {"a": {"accuracy": 1}}}'), "re-run"),
    ("cli-report-not-an-object", lambda t: report_of(t, '[1, 2]'), "re-run"),
    # --- data files and factories ----------------------------------------------------------------------------------
    ("data-builtin-unknown-kwarg", with_sets("data.kwargs={foo: 1}"), "fix data.kwargs"),
    ("data-builtin-bad-value", with_sets("data.kwargs.test_fraction=2"), "fix data.kwargs"),
    ("data-npz-without-path", with_sets("data.name=npz"), "fix data.kwargs"),
    ("data-empty-dataset", with_sets("data.name=bad_inputs_factories:empty"), "at least one example"),
    ("data-batch-larger-than-tiny-data", with_sets("data.name=bad_inputs_factories:tiny"), "lower data.batch_size"),
    ("data-factory-wrong-return", with_sets("data.name=bad_inputs_factories:one_dataset"), "(train, val, test)"),
    ("data-factory-bad-kwargs", with_sets("data.name=bad_inputs_factories:empty", "data.kwargs={size: 3}"), "data.kwargs"),
    ("data-factory-missing-file", with_sets("data.name=bad_inputs_factories:reads", "data.kwargs={path: /nonexistent}"),
     "check the paths in data.kwargs"),
    ("data-num-classes-too-small", with_sets("data.num_classes=5"), "at least 10"),
    ("data-no-labels", with_sets("data.name=bad_inputs_factories:unlabelled"), "data.num_classes"),
    ("data-nan-inputs", with_sets("data.name=bad_inputs_factories:nan_inputs", "train.max_nonfinite=2",
                                  "data.batch_size=16"), "consecutive"),
    ("data-npz-missing", lambda t: run_args(t, sets=["data.name=npz", "data.kwargs={path: /nonexistent.npz}"]),
     "existing .npz"),
    ("data-npz-garbage", npz_bytes(data=b"this is not numpy" * 20), "re-create it"),
    ("data-npz-truncated", npz_bytes(cut=0.5), "re-create it"),
    ("data-npz-pickled-objects", npz_case(x_train=np.array([{"a": 1}] * 20, dtype=object)), "re-create it"),
    ("data-npz-missing-array", npz_case(y_test=None), "y_test"),
    ("data-npz-length-mismatch", npz_case(y_train=np.arange(7) % 3), "make them match"),
    ("data-npz-label-out-of-range", lambda t: npz(t, lambda p: np.savez(p, **good_arrays())) + [
        "--set", "data.kwargs.num_classes=2"], "outside [0, 2)"),
    # --- weights and checkpoints -----------------------------------------------------------------------------------
    ("weights-missing", lambda t: run_args(t, sets=[f"teacher.weights={t / 'none.safetensors'}"]), "not found"),
    ("weights-directory", lambda t: run_args(t, sets=[f"teacher.weights={t}"]), "not found"),
    ("weights-garbage", weights(lambda t: st_file(t, garbage=True)), "corrupt or truncated"),
    ("weights-truncated", weights(lambda t: st_file(t, cut=0.6)), "corrupt or truncated"),
    ("weights-wrong-shapes", weights(lambda t: st_file(t, hidden=7)), "do not fit the model"),
    ("weights-malicious-pickle", weights(evil_pth), "refused to load"),
    ("weights-unsupported-format", weights(lambda t: (t / "w.npz").write_bytes(b"x") and t / "w.npz"),
     "use .safetensors"),
    ("checkpoint-resume-corrupt-config", resume_corrupt_config, "is corrupt"),
    # --- teacher caches --------------------------------------------------------------------------------------------
    ("cache-missing", lambda t: with_teacher(t, f"distill.cache={t / 'nope'}"), "build it with `distill cache"),
    ("cache-without-teacher-weights", lambda t: run_args(t, sets=[f"distill.cache={t}"]), "set teacher.weights"),
    ("cache-partial-no-manifest", lambda t: with_teacher(t, f"distill.cache={cache_dir(t, None)}"), "cache"),
    ("cache-corrupt-manifest", lambda t: with_teacher(t, f"distill.cache={cache_dir(t, '{not json')}"), "is corrupt"),
    ("cache-foreign-manifest", lambda t: with_teacher(t, f"distill.cache={cache_dir(t, json.dumps({'a': 1}))}"),
     "rebuild"),
    ("cache-cmd-without-teacher", lambda t: ["cache", str(RECIPES / "digits.yaml")], "set teacher.weights"),
    ("cache-cmd-out-is-a-file", lambda t: cache_cmd(t, "--out", str((t / "f").write_text("x") and t / "f")), "is a file"),
    ("cache-cmd-bad-storage", lambda t: cache_cmd(t, "--out", str(t / "c"), "--storage", "zip"), "'dense' or 'topk'"),
    ("cache-with-a-feature-method", lambda t: run_args(t, sets=["distill.method=rkd", "distill.alpha=null", "distill.teacher_precision=bf16"]),
     "runs its teacher models live"),
    ("cache-cmd-bad-topk", lambda t: cache_cmd(t, "--out", str(t / "c"), "--storage", "topk", "--topk", "10"),
     "topk must be between"),
    ("seeds-empty", with_sets("train.seeds=[]"), "train.seeds: Value error, list at least one seed"),
    ("seeds-repeated", with_sets("train.seeds=[0, 1, 0]"), "seed 0 is listed more than once"),
    ("seeds-negative", with_sets("train.seeds=[-1]"), "seeds must be in [0, 2**32)"),
    ("variant-unknown", with_sets("compress.variants=[teacher_fp16]"), "unknown variant 'teacher_fp16'"),
    ("variant-prune-100", with_sets("compress.variants=[teacher_pruned_100]"), "must be a percentage in (0, 100)"),
    ("variant-prune-0", with_sets("compress.variants=[student_channels_0]"), "must be a percentage in (0, 100)"),
    ("variant-int8-without-weights", with_sets("student.name=bad_inputs_factories:no_weights",
                                               "compress.variants=[student_int8]"), "no Linear or Conv layer to quantize"),
    ("variant-repeated", with_sets("compress.variants=[teacher_int8, teacher_int8]"), "listed more than once"),
    ("finetune-negative-epochs", with_sets("compress.finetune.epochs=-1"), "compress.finetune.epochs"),
    ("finetune-zero-lr", with_sets("compress.finetune.lr=0"), "compress.finetune.lr"),
    ("finetune-unknown-key", with_sets("compress.finetune.step=10"), "compress.finetune.step"),
]


def test_catalogue_size():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 81  # cases are added, never dropped (81 when this was written)


@pytest.mark.parametrize("case_id, build, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, capsys, case_id, build, fragment):
    argv = build(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "pwned").exists()  # nothing was unpickled
    for run_dir in {tmp_path / "run", tmp_path / "done"}:
        assert not (run_dir / "report.json").exists() or case_id.startswith("cli-report")
        status = run_dir / "status.json"
        assert not status.exists() or json.loads(status.read_text())["status"] != "complete"


def test_a_bad_input_in_a_real_process(tmp_path):
    """The real stderr of a real process: one line, exit 2, no traceback."""
    recipe = recipe_file(tmp_path, setk("train.lrr", 0.1))
    proc = subprocess.run([sys.executable, "-m", "distill", "run", str(recipe), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "train.lrr: unknown key" in proc.stderr
    assert not (tmp_path / "run").exists()


# --- property: the validator only ever yields a Recipe or a DistillError -------------------------------------------
KEYS = ["name", "seed", "data", "teacher", "student", "distill", "train", "eval", "kwargs", "weights", "epochs", "lr",
        "method", "temperature", "alpha", "options", "batch_size", "num_classes", "labelled_fraction", "optimizer",
        "scheduler", "max_steps", "grad_accum", "checkpoint_every", "max_nonfinite", "temperatures", "hidden", "sigmoid", "bogus"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["digits", "mlp", "kd", "scratch", "adam", "cosine", "a:b"]))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers()),
                                               children, max_size=6)),
    max_leaves=30,
)


def _near_valid(doc: dict[str, Any]) -> dict[str, Any]:
    base = json.loads(json.dumps(BASE))
    base.update(doc)
    return base


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(documents, documents.filter(lambda d: isinstance(d, dict)).map(_near_valid),
                 st.dictionaries(st.sampled_from(KEYS), documents, max_size=8).map(_near_valid)))
def test_validator_yields_a_recipe_or_a_distill_error(doc):
    try:
        recipe = validate(doc)
    except DistillError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(recipe, Recipe)
