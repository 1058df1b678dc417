"""A run, end to end: teacher (trained or loaded) -> student alone -> student distilled -> evaluate -> report.

Everything a user can get wrong is checked *before* the run directory is created (recipe, data, models, class
counts, weights). The run directory is the contract with everything after it:
`runs/<name>/{config.yaml, status.json, metrics.jsonl, checkpoints/, student.safetensors, report.json, report.html,
plots/}`; `status.json` says `complete` only once `report.json` and `report.html` exist.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from torch import nn

from . import variants
from .augment import augmented
from .batch import forward_logits, inputs_of
from .config import Recipe, TrainConfig
from .data import DataBundle, load_data
from .engine.checkpoint import Checkpointer
from .engine.distributed import cpu_only_launch
from .engine.io import load_weights, save_weights
from .engine.loop import fit
from .engine.metrics import MetricsLog
from .engine.phases import run_generations
from .errors import DistillError
from .methods import METHODS, build_method
from .models import create_model
from .models.pretrained import is_pretrained
from .recipe import dump_recipe
from .report import render
from .run_dir import make_run_dir, open_for_resume, write_status
from .seeds import combine, fresh_student, student_seeds, tag
from .task_kinds import data_loader, example_batch, task_kind
from .teachers import LiveTeacher, freeze


@dataclass
class Prepared:
    """Everything built and checked before a run directory exists."""

    recipe: Recipe
    data: DataBundle
    teacher: nn.Module
    student_init: nn.Module  # the student's initial weights, shared by the scratch and distilled phases
    extra_teachers: list[nn.Module] = field(default_factory=list)  # further teachers a method asks for (ensemble)
    # distill.cache as the task kind opens it (a classifier's CachedTeacher, a causal LM's LMCacheSource), checked
    # against this teacher and data
    cache: Any = None


def prepare(recipe: Recipe, *, open_cache: bool = True) -> Prepared:
    """Load data and build models; check shapes and class counts on one example batch. Raises `DistillError`.
    `open_cache=False`: leave `distill.cache` unopened (`distill cache` is about to build it)."""
    kind = task_kind(recipe)  # an unknown task or bad task_options fails before any data or model is loaded
    set_seed(recipe.seed)
    data = load_data(
        recipe.data.name,
        kwargs=recipe.data.kwargs,
        num_classes=recipe.data.num_classes,
        labelled_fraction=recipe.data.labelled_fraction,
        seed=recipe.seed,
    )
    if recipe.data.batch_size > len(data.train):
        raise DistillError(
            f"data.batch_size ({recipe.data.batch_size}) is larger than the training set ({len(data.train)} examples); "
            "lower data.batch_size"
        )
    kw = {"input_shape": data.input_shape, "num_classes": data.num_classes}
    teacher = create_model(recipe.teacher.name, **kw, **recipe.teacher.kwargs)
    if recipe.teacher.weights:
        load_weights(teacher, recipe.teacher.weights)
    student = create_model(recipe.student.name, **kw, **recipe.student.kwargs)
    method_cls = METHODS.get(recipe.distill.method)
    extra_cfgs = method_cls.extra_teachers(recipe.distill.options)
    extra = [create_model(c.name, **kw, **c.kwargs) for c in extra_cfgs]
    for c, model in zip(extra_cfgs, extra):
        if c.weights:
            load_weights(model, c.weights)
    batch = example_batch(data.train, 2)
    counts = {}
    roles = [("teacher", teacher), ("student", student)] + [(f"teacher {i}", m) for i, m in enumerate(extra, start=1)]
    for role, model in roles:
        model.eval()
        try:
            with torch.no_grad():
                counts[role] = forward_logits(model, inputs_of(batch)).shape[-1]
        except (RuntimeError, TypeError, ValueError) as exc:
            msg = " ".join(str(exc).split())[:200]
            raise DistillError(
                f"the {role} model cannot run on {recipe.data.name!r} inputs of shape {data.input_shape} ({msg}); "
                f"fix {role}.name/{role}.kwargs"
            ) from None
        model.train()
    kind.check_outputs(counts, data, recipe)  # class counts, embedding sizes, vocabularies
    if method_cls.runs_teacher_models and (recipe.distill.cache or recipe.distill.teacher_precision != "fp32"):
        raise DistillError(
            f"method {recipe.distill.method!r} runs its teacher models live in fp32; remove distill.cache and "
            "distill.teacher_precision (they apply to kd-style methods that learn from the recipe's teacher source)"
        )
    method_cls.check(student, teacher, batch, recipe.distill.options, extra=extra)  # e.g. layer paths and pairing, before any write
    variants.check(recipe, teacher, student, batch)  # compress.variants: packages, input type, weight layers
    return Prepared(recipe, data, teacher, student, extra, kind.open_cache(recipe, data, teacher) if open_cache else None)


def _accelerator(recipe: Recipe, run_dir: Path) -> Accelerator:
    trackers = "tensorboard" if importlib.util.find_spec("tensorboard") is not None else None
    acc = Accelerator(mixed_precision=recipe.train.mixed_precision, log_with=trackers, project_dir=str(run_dir),
                      cpu=cpu_only_launch())
    if trackers:
        acc.init_trackers(recipe.name)
    return acc


def run_recipe(recipe: Recipe, out: Path | None = None, *, overwrite: bool = False, progress: bool = True,
               resume: bool = False) -> Path:
    """Run a whole recipe and return its run directory (with `report.html` rendered).

    `resume`: continue the run in `out` from its newest complete checkpoints (finished phases are not retrained).
    Under `accelerate launch` every process runs this; only the main one writes the run directory.
    """
    prepared = prepare(recipe)  # every user error surfaces here, before anything is written
    run_dir = Path(out) if out else Path("runs") / recipe.name
    state = PartialState(cpu=cpu_only_launch())  # under `accelerate launch`: all processes check, the main one writes
    if resume:
        open_for_resume(run_dir, dump_recipe(recipe), overwrite=overwrite)
    elif not overwrite and run_dir.exists() and any(run_dir.iterdir()):
        make_run_dir(run_dir, overwrite)  # raises the "already exists" error in every process alike
    state.wait_for_everyone()  # every process has checked before the main one creates anything
    main = state.is_main_process
    if main:
        if not resume:
            make_run_dir(run_dir, overwrite)
        (run_dir / "config.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
        write_status(run_dir, "running")
    state.wait_for_everyone()
    try:
        _train_and_evaluate(prepared, run_dir, progress, resume)
    except BaseException as exc:
        if main:
            write_status(run_dir, "failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    if main:
        write_status(run_dir, "complete")
    return run_dir


def _train_and_evaluate(p: Prepared, run_dir: Path, progress: bool, resume: bool = False) -> None:
    r, data = p.recipe, p.data
    acc = _accelerator(r, run_dir)
    log = MetricsLog(run_dir / "metrics.jsonl", acc)
    ckpt = Checkpointer(run_dir / "checkpoints", every=r.train.checkpoint_every, accelerator=acc, resume=resume)
    val_loader = data_loader(data.val, r.data.eval_batch_size, shuffle=False, seed=r.seed)

    kind = task_kind(r)  # what the models output decides the checks, the student alone, validation and metrics
    val = kind.validation(val_loader, acc.device)

    def train(name: str, method: nn.Module, seed: int = r.seed, cfg: TrainConfig | None = None,
              **kw: Any) -> dict[str, Any]:
        set_seed(seed)  # same seed, same data order, same dropout draws for every phase of a seed
        train_set = data.teacher_train if name.startswith("teacher") else data.train
        # the views stay those of the recipe's seed (an offline teacher cache is built against them)
        train_set = augmented(train_set, r.augment, r.seed, mix=name.startswith("distilled"))  # mixing needs a teacher
        loader = data_loader(train_set, r.data.batch_size, shuffle=True, seed=seed, workers=r.data.num_workers)
        return fit(method, loader, cfg or r.train, accelerator=acc, phase=name, log=log, evaluate=val, progress=progress,
                   checkpointer=ckpt, **kw)

    phases: dict[str, Any] = {}
    teacher = p.teacher
    if r.teacher.weights is None and not is_pretrained(teacher):
        scratch_teacher = build_method("scratch", teacher, None)
        phases["teacher"] = train("teacher", scratch_teacher, epochs=r.teacher.epochs, lr=r.teacher.lr)
    teacher = acc.unwrap_model(teacher)
    if acc.is_main_process:
        save_weights(teacher, run_dir / "checkpoints" / "teacher.safetensors")
    freeze(teacher)
    diagnostics = kind.diagnostics(teacher, r, data, acc)
    temperature = diagnostics["temperature"]  # the recipe's T, or the one `temperature: auto` derived

    # What the method needs is read from its class (extra teachers, generations, its teacher source): no method
    # names here. Plain KD: no extra teachers, one generation, the recipe's teacher.
    cls, opts = METHODS.get(r.distill.method), r.distill.options
    extra: list[nn.Module] = []
    for i, (cfg, model) in enumerate(zip(cls.extra_teachers(opts), p.extra_teachers), start=1):
        if cfg.weights is None:
            epochs, lr = cfg.epochs or r.teacher.epochs, cfg.lr or r.teacher.lr
            phases[f"teacher.{i}"] = train(f"teacher.{i}", build_method("scratch", model, None), epochs=epochs, lr=lr)
        extra.append(freeze(acc.unwrap_model(model)))
    source = _source(p, teacher, run_dir, acc) if cls.needs_teacher else None
    students: dict[str, nn.Module] = {}
    for seed in student_seeds(r):  # [None] without train.seeds: phases `scratch`, `distilled` on the recipe's seed
        init = p.student_init if seed is None else fresh_student(r, data, seed)

        def train_and_save(name: str, method: nn.Module, suffix: str = tag(seed),
                           run_seed: int = r.seed if seed is None else seed) -> dict[str, Any]:
            summary = train(name + suffix, method, seed=run_seed)
            if acc.is_main_process:  # every student, for the report and for resume
                save_weights(acc.unwrap_model(method).student, run_dir / "checkpoints" / f"{name}{suffix}.safetensors")
            return summary

        def save_alone(model: nn.Module, suffix: str = tag(seed)) -> None:
            if acc.is_main_process:
                save_weights(model, run_dir / "checkpoints" / f"scratch{suffix}.safetensors")

        alone, phases[f"scratch{tag(seed)}"] = kind.train_alone(init, train_and_save, save_alone, acc.unwrap_model,
                                                                acc.device)
        students[f"scratch{tag(seed)}"] = alone
        models = {"teacher": teacher, "extra": extra, "previous": students[f"scratch{tag(seed)}"], "source": source}
        final, distilled, _ = run_generations(
            r.distill.method, student_init=init, models=models, temperature=temperature,
            alpha=r.distill.alpha, options=opts, train=train_and_save, unwrap=acc.unwrap_model,
        )
        phases.update({name + tag(seed): summary for name, summary in distilled.items()})
        students[f"distilled{tag(seed)}"] = final

    if acc.is_main_process:
        save_weights(students[f"distilled{tag(student_seeds(r)[0])}"], run_dir / "student.safetensors")
        distilled_students = {k: m for k, m in students.items() if k.partition("@")[0] == "distilled"}

        def finetune(phase: str, model: nn.Module, *, epochs: int, lr: float,
                     max_steps: int | None) -> tuple[nn.Module, dict[str, Any]]:
            """A pruned variant's short fine-tune (`compress.finetune`): the student alone's objective, the same loop."""
            method = build_method("scratch", model.requires_grad_(True), None)
            cfg = r.train.model_copy(update={"max_steps": max_steps})
            phases[phase] = train(phase, method, cfg=cfg, epochs=epochs, lr=lr)
            return freeze(acc.unwrap_model(method).student).cpu(), phases[phase]

        # variants are built by the main process alone: a fine-tune there cannot join the other processes' DDP
        built = variants.build(r, data, teacher, distilled_students, run_dir / "variants",
                               finetune if acc.num_processes == 1 else None)
        report = evaluate_models({"teacher": teacher, **students, **{k: v.model for k, v in built.items()}}, p, acc.device,
                                 run_dir=run_dir)
        for name, variant in built.items():  # ONNX files: their size on disk and the source's parameter count
            report["models"][name].update(variant.info)
        if r.train.seeds:  # mean ± 95% CI per column, and the paired gain
            report.update(combine(report["models"], r.train.seeds))
        report["phases"] = phases
        report["diagnostics"] = diagnostics
        report.setdefault("explorer", {})["chosen_temperature"] = temperature
        report["recipe"] = {"name": r.name, "seed": r.seed, "seeds": r.train.seeds, "method": r.distill.method,
                            "temperature": temperature, "temperature_auto": r.distill.temperature == "auto", "alpha": r.distill.alpha,
                            "labelled_fraction": r.data.labelled_fraction}
        tmp = run_dir / ".report.json.tmp"
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(run_dir / "report.json")
        render(run_dir)
    acc.wait_for_everyone()  # no process returns before the report exists
    acc.end_training()




def _source(p: Prepared, teacher: nn.Module, run_dir: Path, acc: Accelerator) -> Any:
    """The distilled phase's teacher: the cache when the recipe names one (no teacher forward), else live. The live
    teacher's execution choice is kept in the run directory, so `--resume` replays the same arithmetic (main process;
    under several processes the others choose for themselves, as they did before the resume)."""
    if p.cache is not None:
        return p.cache
    r = p.recipe
    bf16 = r.distill.teacher_precision == "bf16"
    record = run_dir / "checkpoints" / "teacher_execution.json" if acc.is_main_process else None
    # one teacher call per training step: whether compiling the teacher pays depends on how many there will be
    batches = -(-len(p.data.train) // (r.data.batch_size * acc.num_processes))
    calls = r.train.epochs * batches  # micro-batches: each update is train.grad_accum of them
    if r.train.max_steps is not None:
        calls = min(r.train.max_steps * r.train.grad_accum, calls)
    return LiveTeacher(teacher, autocast=torch.bfloat16 if bf16 else None, record=record, expected_calls=calls,
                       max_copy_share=r.distill.teacher_copy_share)


def evaluate_models(models: dict[str, nn.Module], p: Prepared, device: torch.device,
                    run_dir: Path | None = None) -> dict[str, Any]:
    """Test-set metrics, size and speed for every model variant (the first one is the reference teacher), as the
    recipe's task kind measures them (`task_kinds`); `run_dir`: where a kind writes extra artifacts."""
    return task_kind(p.recipe).evaluate(models, p.data, p.recipe, device, run_dir)
