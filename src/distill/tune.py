"""`distill tune RECIPE --budget 20m`: a search over the distillation settings of a recipe, with Optuna.

Two searches share the budget, half each, so the comparison stays fair: the distilled student over `method`,
`temperature`, `alpha`, `standardize` (kd's logit standardisation) and `lr`, and the student trained alone over `lr`
only. Every trial trains on the recipe's training split for `train.epochs` epochs and is scored by its accuracy on the
validation split (never the test split). The training loop's per-epoch `evaluate` callback reports that accuracy to
Optuna, whose successive-halving pruner stops poor trials early (Jamieson & Talwalkar 2016; Li et al. 2017): no second
training loop. Sampler: TPE (Bergstra et al. 2011), seeded.

The tune directory (`tunes/<name>` by default) holds `study.db` (Optuna's SQLite storage: every finished trial is
kept, so an interrupted tune resumes where it stopped and spends only the rest of its budget), `best.yaml` (the best
distilled recipe, ready for `distill run`), `tune.json` (every trial) and `tune.html` (score against each
parameter, with the tuned student-alone baseline).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from .batch import index_of
from .config import Recipe
from .diagnose import recipe_diagnostics
from .engine.evaluate import accuracy, predict
from .engine.io import load_weights, save_weights
from .engine.loop import fit
from .errors import DistillError
from .methods import METHODS, build_method
from .models.pretrained import is_pretrained
from .pipeline import Prepared, data_loader, prepare
from .recipe import dump_recipe, validate
from .report.tune_page import tune_page
from .teachers import LiveTeacher, freeze
from .tune_space import SPACE, applies, parse_budget, parse_space, space_json, suggest

MIN_VAL = 20  # labelled validation examples a score needs to mean anything


class IndexedLogits:
    """A teacher source holding the teacher's logits for every training example, looked up by the batch's `index`:
    the teacher runs once per tune, not once per step of every trial (valid without augmentation)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits  # (N, C) float32

    def to(self, device: torch.device) -> IndexedLogits:
        self.logits = self.logits.to(device)
        return self

    def __call__(self, batch: Any) -> torch.Tensor:
        return self.logits[index_of(batch).to(self.logits.device)]


@dataclass
class Setup:
    recipe: Recipe
    prepared: Prepared
    teacher: nn.Module
    source: Any  # IndexedLogits or LiveTeacher


def _check_methods(recipe: Recipe, chosen: dict[str, tuple[str, Any]]) -> None:
    """A trial trains one distilled phase from the recipe's one teacher (cached logits, or live under augmentation).
    Methods whose hooks ask for more (generations, a student-alone teacher, extra teachers, tapping teacher
    features) would be scored as something else than the recipe written for them: refuse them."""
    names = list(chosen["method"][1]) if "method" in chosen else [recipe.distill.method]
    for name in names:
        cls = METHODS.get(name)
        opts = recipe.distill.options if name == recipe.distill.method else {}
        if (not cls.needs_teacher or cls.runs_teacher_models or cls.generations(opts) > 1
                or cls.needs_scratch_student(opts) or cls.extra_teachers(opts)):
            raise DistillError(
                f"distill tune scores methods that learn from the recipe's one teacher in one phase (kd, dkd); "
                f"{name!r} is not one (it runs teacher models, several generations or several teachers): tune its "
                "train.lr with `distill run --set`, or tune kd/dkd"
            )


def _setup(recipe: Recipe, out: Path) -> Setup:
    """Prepare data and models, check the validation split, load or train the teacher (saved in `out`)."""
    p = prepare(recipe)
    labelled = sum(int(p.data.val[i]["labels"]) != -100 for i in range(min(len(p.data.val), MIN_VAL * 10)))
    if labelled < MIN_VAL:
        raise DistillError(
            f"distill tune scores trials on the validation split, and dataset {recipe.data.name!r} has {labelled} "
            f"labelled validation examples (need {MIN_VAL}); give it a validation split (e.g. data.kwargs.val_fraction)"
        )
    teacher = p.teacher
    saved = out / "teacher.safetensors"
    if recipe.teacher.weights is None and not is_pretrained(teacher):
        if saved.is_file():
            load_weights(teacher, saved)
        else:
            set_seed(recipe.seed)
            loader = data_loader(p.data.teacher_train, recipe.data.batch_size, shuffle=True, seed=recipe.seed)
            fit(build_method("scratch", teacher, None), loader, recipe.train, accelerator=Accelerator(cpu=True),
                phase="teacher", epochs=recipe.teacher.epochs, lr=recipe.teacher.lr, progress=False)
            teacher = teacher.to("cpu")
            save_weights(teacher, saved)
    teacher = freeze(teacher.to("cpu"))
    if recipe.augment.active:
        source: Any = LiveTeacher(teacher)
    else:
        logits, _ = predict(teacher, data_loader(p.data.train, recipe.data.eval_batch_size, shuffle=False, seed=0))
        source = IndexedLogits(logits)
    return Setup(recipe, p, teacher, source)


def _trial_recipe(recipe: Recipe, params: dict[str, Any]) -> Recipe:
    """The recipe with a trial's settings (`standardize` into the method's options, where the method has it)."""
    doc = recipe.model_dump(mode="json")
    d = doc["distill"]
    if "method" in params:
        if params["method"] != d["method"]:
            d["options"] = {}
        d["method"] = params["method"]
    for key in ("temperature", "alpha"):
        if key in params:
            d[key] = params[key]
        elif not applies(key, d["method"]):
            d[key] = None  # not written: the method does not read it
    if "standardize" in params:
        d["options"] = {**d["options"], "standardize": bool(params["standardize"])}
    if "lr" in params:
        doc["train"]["lr"] = params["lr"]
    return validate(doc, source="tuned recipe")


def _train_trial(s: Setup, recipe: Recipe, distilled: bool, report: Any | None) -> float:
    """Train one student (distilled or alone) as `recipe` says; returns the last epoch's validation accuracy.
    `report(epoch, acc)` is called from the loop's per-epoch evaluate callback (it may raise optuna.TrialPruned)."""
    r, data = recipe, s.prepared.data
    acc = Accelerator(cpu=True)
    val_loader = data_loader(data.val, r.data.eval_batch_size, shuffle=False, seed=r.seed)
    scores: list[float] = []

    def evaluate(method: nn.Module) -> dict[str, float]:
        scores.append(accuracy(method.student, val_loader, acc.device))
        if report is not None:
            report(len(scores) - 1, scores[-1])
        return {"accuracy": scores[-1]}

    student = copy.deepcopy(s.prepared.student_init)
    if distilled:
        temperature = r.distill.temperature
        if temperature == "auto":  # as a run resolves it: from the teacher's diagnostics under this trial's settings
            temperature = recipe_diagnostics(s.teacher, r, data.train)["temperature"]
        method = build_method(r.distill.method, student, s.source, temperature=temperature, alpha=r.distill.alpha,
                              options=r.distill.options)
    else:
        method = build_method("scratch", student, None)
    set_seed(r.seed)
    loader = data_loader(data.train, r.data.batch_size, shuffle=True, seed=r.seed, workers=r.data.num_workers)
    fit(method, loader, r.train, accelerator=acc, phase="trial", evaluate=evaluate, progress=False)
    return scores[-1]


def _estimate(s: Setup) -> float:
    """Seconds one trial takes: a timed epoch's share of a few steps, scaled to train.epochs (+ validation).
    An untimed 1-step run goes first: a process's first training steps pay one-off start-up costs (~2 s on CPU) that
    would otherwise be counted 5 steps' worth per step and overestimate a trial ~25x (205 s for a 8 s trial)."""
    r = s.recipe
    warm = r.model_copy(update={"train": r.train.model_copy(update={"max_steps": 1, "epochs": 1})})
    _train_trial(s, warm, True, None)
    quick = r.model_copy(update={"train": r.train.model_copy(update={"max_steps": 5, "epochs": 1})})
    started = time.perf_counter()
    _train_trial(s, quick, True, None)
    per_step = (time.perf_counter() - started) / 5
    steps = math.ceil(math.ceil(len(s.prepared.data.train) / r.data.batch_size) / r.train.grad_accum) * r.train.epochs
    if r.train.max_steps:
        steps = min(steps, r.train.max_steps)
    return per_step * steps


def _open_study(out: Path, name: str, space_json: str, recipe_yaml: str, seed: int) -> Any:
    import optuna

    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                pruner=pruner, sampler=sampler)
    saved_space, saved_recipe = study.user_attrs.get("space"), study.user_attrs.get("recipe")
    if saved_space is None:
        study.set_user_attr("space", space_json)
        study.set_user_attr("recipe", recipe_yaml)
    elif saved_space != space_json:
        raise DistillError(f"{str(out)!r} holds a tune over a different search space ({saved_space}); resume with "
                           "the same --space, or choose a new --out")
    elif saved_recipe != recipe_yaml:
        raise DistillError(f"{str(out)!r} holds a tune of a different recipe; resume with the same recipe and --set "
                           "overrides, or choose a new --out")
    return study


def _spent(study: Any) -> float:
    """Seconds the finished trials of `study` took (what a resumed tune has already used of its budget)."""
    total = 0.0
    for t in study.get_trials(deepcopy=False):
        if t.datetime_start and t.datetime_complete:
            total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total


def _search(s: Setup, study: Any, space: dict[str, tuple[str, Any]], distilled: bool, budget: float,
            per_trial: float, bar: Progress, task: Any, max_trials: int | None = None) -> None:
    import optuna

    while budget - _spent(study) >= per_trial and (max_trials is None or len(study.trials) < max_trials):
        trial = study.ask()
        params = suggest(trial, space, s.recipe.distill.method if distilled else "scratch")
        recipe = _trial_recipe(s.recipe, params)

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            score = _train_trial(s, recipe, distilled, report)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # recorded; the finished ones stay
            raise
        else:
            study.tell(trial, score)
        done = [t for t in study.trials if t.value is not None]
        best = max((t.value for t in done if t.state == optuna.trial.TrialState.COMPLETE), default=math.nan)
        bar.update(task, completed=min(budget, _spent(study)), status=f"{len(done)} trials, best val {100 * best:.2f}%")


def tune(recipe: Recipe, budget: str | float, out: str | Path | None = None, *, space: list[str] | None = None,
         progress: bool = True, baseline: bool = True, max_trials: int | None = None) -> dict[str, Any]:
    """Run (or resume) a tune; write `best.yaml`, `tune.json`, `tune.html` in `out`. Returns the summary.

    Raises `DistillError` (nothing of a previous tune lost) for: a budget that cannot fit one trial, an unknown
    search-space key, a dataset without a labelled validation split, a resume with a different space or recipe.
    `max_trials` caps the trials of each search (those of an earlier, resumed run count)."""
    if importlib.util.find_spec("optuna") is None:
        raise DistillError("distill tune needs Optuna: pip install 'distill[tune]' (or pip install optuna)")
    seconds = budget if isinstance(budget, (int, float)) else parse_budget(budget)
    chosen = parse_space(space)
    out = Path(out or Path("tunes") / recipe.name)
    if seconds <= 0:
        raise DistillError("--budget must be more than 0; write e.g. 20m")
    fresh = not (out / "study.db").exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _tune(recipe, seconds, str(budget), out, chosen, progress, baseline, max_trials)
    except DistillError:
        if fresh:  # a refused new tune leaves nothing behind (a refused resume keeps every trial it had)
            for name in ("study.db", "teacher.safetensors"):
                (out / name).unlink(missing_ok=True)
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise


def _tune(recipe: Recipe, seconds: float, budget: str, out: Path, chosen: dict[str, tuple[str, Any]],
          progress: bool, baseline: bool, max_trials: int | None) -> dict[str, Any]:
    import optuna

    recipe_yaml, chosen_json = dump_recipe(recipe), space_json(chosen)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distilled_study = _open_study(out, "distilled", chosen_json, recipe_yaml, recipe.seed)  # checks before training
    lr_space = {"lr": chosen.get("lr", SPACE["lr"])}
    base_study = _open_study(out, "student-alone", space_json(lr_space), recipe_yaml, recipe.seed) if baseline else None
    _check_methods(recipe, chosen)  # before the teacher trains
    s = _setup(recipe, out)
    share = seconds / 2 if baseline else seconds
    per_trial = _estimate(s)
    if per_trial > share and not distilled_study.trials:
        raise DistillError(
            f"--budget {budget} cannot fit one trial: a trial takes ~{per_trial:.0f} s ({recipe.train.epochs} epochs) "
            f"and {'half the budget (the other half tunes the student alone)' if baseline else 'the budget'} is "
            f"{share:.1f} s; raise --budget to at least {math.ceil(per_trial * (2 if baseline else 1) / 60)}m or lower "
            "train.epochs"
        )
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), disable=not progress) as bar:
        for name, study, sub_space, distilled in (("distilled", distilled_study, chosen, True),
                                                  ("student alone", base_study, lr_space, False)):
            if study is None:
                continue
            task = bar.add_task(f"tune {name}", total=share, completed=min(share, _spent(study)), status="")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                _search(s, study, sub_space, distilled, share, per_trial, bar, task, max_trials)
    return write_outputs(s, out, distilled_study, base_study, seconds)


def _trials(study: Any) -> list[dict[str, Any]]:
    return [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "epochs": len(t.intermediate_values), "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
             if t.datetime_complete and t.datetime_start else None} for t in study.get_trials(deepcopy=False)]


def _best(study: Any) -> Any | None:
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return max(done, key=lambda t: t.value) if done else None


def write_outputs(s: Setup, out: Path, distilled: Any, base: Any | None, budget_s: float) -> dict[str, Any]:
    """`best.yaml` (the best distilled recipe; teacher.weights pointing at the tune's teacher if it trained one),
    `tune.json` and `tune.html`. Written through temporary files: an interrupted write leaves the previous ones."""
    best = _best(distilled)
    if best is None:
        raise DistillError(f"no distilled trial finished in {str(out)!r}; raise --budget (finished trials are kept)")
    recipe = _trial_recipe(s.recipe, best.params)
    if recipe.teacher.weights is None and (out / "teacher.safetensors").is_file():
        recipe = recipe.model_copy(update={"teacher": recipe.teacher.model_copy(
            update={"weights": str(out / "teacher.safetensors")})})
    base_best = _best(base) if base is not None else None
    summary = {
        "recipe": s.recipe.name, "budget_s": budget_s, "metric": "validation accuracy",
        "best": {"value": best.value, "params": best.params, "number": best.number},
        "baseline": ({"value": base_best.value, "params": base_best.params} if base_best else None),
        "trials": _trials(distilled), "baseline_trials": _trials(base) if base is not None else [],
        "space": json.loads(distilled.user_attrs["space"]),
    }
    files = {"best.yaml": dump_recipe(recipe), "tune.json": json.dumps(summary, indent=2), "tune.html": tune_page(summary)}
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    summary["best_recipe"] = str(out / "best.yaml")
    return summary
