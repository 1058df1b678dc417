"""Command line: thin wrappers over the library. Every user error ends in one line on stderr and exit status 2."""

from __future__ import annotations

import re
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from .errors import DistillError, DistillWarning

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Knowledge distillation: teacher -> small student.")
console = Console() if sys.stdout.isatty() else Console(width=140)
err_console = Console(stderr=True)


def _table(run_dir: Path) -> Table:
    from .report import load_report

    report = load_report(run_dir)
    table = Table(title=f"{run_dir.name}: test set, {report.get('dataset', {}).get('test_size', '?')} examples")
    lm = report.get("task") == "causal_lm"  # next-token scores: NLL instead of ECE, generated tokens/s
    last = ("NLL", "gen tok/s") if lm else ("ECE", "ex/s")
    for col in ("model", "accuracy", "agreement", "KL→teacher", last[0], "params", "size", "p50 ms", "p95 ms", last[1]):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, m in report["models"].items():
        third = f"{m['nll']:.3f}" if lm else f"{m['ece']:.3f}"
        speed = f"{m.get('generate_tokens_per_s', 0):,.1f}" if lm else f"{m.get('throughput_per_s', 0):,.0f}"
        table.add_row(
            name, f"{100 * m['accuracy']:.2f}%{_ci_points(m)}", f"{100 * m['agreement']:.1f}%", f"{m['kl_to_teacher']:.3f}",
            third, f"{m['params']:,}", f"{m['size_bytes'] / 1024:.1f} KiB",
            f"{m['latency_ms_p50']:.3f}", f"{m['latency_ms_p95']:.3f}", speed,
        )
    return table


def _ci_points(row: dict) -> str:
    """` ± x.xx` (half the 95% CI of the accuracy, in points) for a row that is a mean over `train.seeds`."""
    ci = (row.get("ci95") or {}).get("accuracy")
    return f" ± {50 * (ci[1] - ci[0]):.2f}" if ci else ""


def _run(recipe_path: Path, out: Optional[Path], overrides: list[str], overwrite: bool, progress: bool,
         resume: bool = False, fresh_dir: bool = False) -> None:
    from accelerate import PartialState

    from .pipeline import run_recipe
    from .recipe import load_recipe
    from .report import load_report, verdict

    started = time.perf_counter()
    recipe = load_recipe(recipe_path, overrides)
    if fresh_dir and out is None and not overwrite:
        out = _next_free(Path("runs") / recipe.name)
    run_dir = run_recipe(recipe, out, overwrite=overwrite, progress=progress, resume=resume)
    if not PartialState().is_main_process:  # under `accelerate launch`: one table, from the main process
        return
    console.print(_table(run_dir))
    report = load_report(run_dir)
    console.print(verdict(report["models"], report["dataset"]["test_size"], recipe.seed, gain=report.get("gain")))
    console.print(f"report: {run_dir / 'report.html'}")
    console.print(f"wall time: {time.perf_counter() - started:.1f} s")


def _next_free(path: Path) -> Path:
    """`path` if it is absent or empty, else the first free `path-2`, `path-3`, ... (a demo never deletes a run)."""
    candidate, n = path, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/digits, or the next free runs/digits-N)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: --set train.epochs=5"),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory instead of writing a new one."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Run the built-in default recipe (digits): teacher, student alone, student distilled, and the report.

    Never deletes a run: without --out it writes runs/digits, or runs/digits-2, -3, ... when that exists; an existing
    --out is refused unless --overwrite is given."""
    _run(Path("digits"), out, set_, overwrite=overwrite, progress=progress, fresh_dir=True)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="A YAML recipe file, or a built-in recipe name (see `distill list`), e.g. digits"),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<name>)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: --set distill.temperature=8"),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its newest complete checkpoint."),
) -> None:
    """Run a recipe."""
    _run(recipe, out, set_, overwrite=overwrite, progress=progress, resume=resume)


@app.command()
def cache(
    recipe: Path = typer.Argument(..., help="A YAML recipe (a classifier's with teacher.weights set, or a causal_lm one)."),
    out: Optional[Path] = typer.Option(None, help="Cache directory (default distill.cache, else caches/<name>)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: --set augment.views=8"),
    storage: Optional[str] = typer.Option(
        None, "--storage", "--form",
        help="Classifier: dense (default; float16 log-probs) or topk. Causal LM: sampled (default; K teacher draws "
             "with importance weights) or topk (k log-probs + ids + leftover mass)."),
    topk: Optional[int] = typer.Option(
        None, "--topk", "--k", "-k", help="Classifier topk: classes kept per view (5). Causal LM: k ids (topk) or draws "
                                          "(sampled) per position (64)."),
    temperature: Optional[float] = typer.Option(
        None, help="Causal LM sampled: the T the draws are made at (default distill.temperature; training must use "
                   "it). Classifier: the T of the reported fidelity."),
    rebuild: bool = typer.Option(False, help="Replace a stale, partial or mismatched cache."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run the teacher once over the training data and store its outputs: a classifier's augment.views views, or a
    causal LM's top-k / sampled next-token logit cache (with bytes/token and fidelity on the validation split)."""
    from .recipe import load_recipe
    from .task_kinds import task_kind
    from .tasks import build_recipe_cache

    started = time.perf_counter()
    r = load_recipe(recipe, set_)
    path, m = build_recipe_cache(r, out, storage=storage, k=topk, temperature=temperature, rebuild=rebuild,
                                 progress=progress)
    for line in task_kind(r).cache_lines(path, m, time.perf_counter() - started):
        console.print(line)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """(Re)build report.html from a run directory's artifacts and print its table."""
    from .report import render

    path = render(run_dir)
    console.print(_table(run_dir))
    console.print(f"report: {path}")


@app.command()
def pairs(
    recipe: Path = typer.Argument(..., help="A YAML recipe file or a built-in recipe name, e.g. fashion-mnist"),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: --set distill.method=fitnet"),
) -> None:
    """Print the teacher<->student layer pairing a feature method would use (nothing is trained or written)."""
    from .pairing import projector_params
    from .recipe import load_recipe
    from .tasks import pairing_for_recipe

    r = load_recipe(recipe, set_)
    mode, found = pairing_for_recipe(r)
    table = Table(title=f"{r.name}: {r.distill.method} pairs ({mode} mode)")
    for col in ("student layer", "shape", "depth", "teacher layer", "shape ", "depth ", "projector", "params"):
        table.add_column(col, justify="left" if "layer" in col or col == "projector" else "right")
    for p in found:
        depth = lambda d: "-" if d is None else f"{d:.2f}"  # noqa: E731
        table.add_row(p.student, str(p.student_shape), depth(p.student_depth), p.teacher, str(p.teacher_shape),
                      depth(p.teacher_depth), p.projector, f"{projector_params(p):,}")
    console.print(table)


def _describe(obj: object, shared_module: bool) -> str:
    """One line about a registered object: its module's docstring (one file per entry), else its own docstring."""
    own = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    module_doc = sys.modules[obj.__module__].__doc__ if obj.__module__ in sys.modules else None
    doc = own if shared_module or not module_doc else module_doc
    return _first_sentence(doc or "")


_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)\.\s")  # not "et al. 2015", "e.g. x"


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    end = _SENTENCE_END.search(text)
    return text if end is None else text[: end.start() + 1]


@app.command("list")
def list_() -> None:
    """List the registered methods, models and datasets, and the built-in recipes, with one line on each."""
    from collections import Counter

    from .config import builtin_recipes
    from .data import DATASETS
    from .methods import METHODS
    from .models import MODELS

    for title, registry in (("methods", METHODS), ("models", MODELS), ("datasets", DATASETS)):
        per_module = Counter(registry.get(n).__module__ for n in registry)
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        for name in registry:
            obj = registry.get(name)
            table.add_row(name, _describe(obj, per_module[obj.__module__] > 1))
        console.print(table)
    table = Table(title="recipes (distill run NAME)", show_header=False, title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, path in sorted(builtin_recipes().items()):
        lines = [ln.lstrip("# ").strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#")]
        table.add_row(name, _first_sentence(" ".join(lines)))
    console.print(table)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"distill {version('distill')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Knowledge distillation: teacher -> small student."""

@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `distill run`."),
    format_: str = typer.Option("safetensors", "--format", help="safetensors (weights + metadata) or onnx."),
    int8: bool = typer.Option(False, "--int8", help="ONNX only: int8 with onnxruntime's quantizer."),
    out: Optional[Path] = typer.Option(None, help="Output file (default RUN_DIR/export/student[.int8].<format>)."),
) -> None:
    """Export the run's student (architecture and input shape travel with the weights; ONNX is checked against
    PyTorch on the test set)."""
    from .deploy import export_run

    meta = export_run(run_dir, format_, int8=int8, out=out)
    console.print(f"exported {meta['architecture']['name']} student: {meta['path']} (metadata: {meta['path']}.json)")
    check = meta.get("onnx", {}).get("check")
    if check:
        pct = lambda a: "?" if a is None else f"{100 * a:.2f}%"  # noqa: E731
        console.print(f"onnxruntime vs PyTorch on {check['examples']} test examples: max |Δlogit| "
                      f"{check['max_abs_diff']:.2e}, accuracy {pct(check['accuracy_onnx'])} vs "
                      f"{pct(check['accuracy_pytorch'])}, agreement {pct(check['agreement'])}")

@app.command()
def check(
    recipe: Path = typer.Argument(..., help="YAML recipe with a trained teacher (teacher.weights or a pretrained model)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: --set distill.temperature=8"),
) -> None:
    """Teacher diagnostics: logit scale, accuracy, softened-target entropy and one-hot share per temperature."""
    from .recipe import load_recipe
    from .tasks import check_recipe

    r = load_recipe(recipe, set_)
    d = check_recipe(r)
    console.print(diagnostics_table(d, r.name))
    for line in d["warnings"]:
        err_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)


@app.command("tune")
def tune_cmd(
    recipe: Path = typer.Argument(..., help="YAML recipe with a validation split, e.g. mnist-pretrained"),
    budget: str = typer.Option("20m", help="Wall time for the trials: half distilled search, half student alone."),
    out: Optional[Path] = typer.Option(None, help="Tune directory (default tunes/<name>); an existing one resumes."),
    space: list[str] = typer.Option([], "--space", help="Search only these keys, optionally with a range: "
                                    "--space lr=1e-4:1e-2 --space method=kd (keys: method temperature alpha standardize lr)"),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: --set train.epochs=5"),
    baseline: bool = typer.Option(True, help="Also tune the student alone (lr only) with the same budget."),
    trials: Optional[int] = typer.Option(None, min=1, help="At most this many trials per search (earlier ones count)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Search method, temperature, alpha, standardize and lr on the validation split (Optuna, pruned, resumable)."""
    from .recipe import load_recipe
    from .tune import tune

    summary = tune(load_recipe(recipe, set_), budget, out, space=space, progress=progress, baseline=baseline,
                   max_trials=trials)
    best, base = summary["best"], summary.get("baseline")
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
    console.print(f"best distilled: {100 * best['value']:.2f}% val accuracy ({params})")
    if base:
        console.print(f"student alone, same budget: {100 * base['value']:.2f}% (lr={base['params']['lr']:.3g})")
    where = Path(summary["best_recipe"]).parent
    console.print(f"best recipe: {summary['best_recipe']}  (distill run {summary['best_recipe']})")
    console.print(f"page: {where / 'tune.html'}")


def diagnostics_table(d: dict, name: str) -> Table:
    """The diagnostics of `distill check` as a rich table (chosen T marked with >)."""
    acc = "" if d["accuracy"] is None else f", accuracy {100 * d['accuracy']:.1f}%"
    auto = " (auto)" if d.get("temperature_auto") else ""
    table = Table(title=f"{name}: teacher on {d['sample']} training examples — logit row std {d['logit_std']:.2f}, "
                        f"max-min {d['logit_range']:.2f}{acc}; chosen T={d['temperature']:g}{auto}"
                        f"{', standardize' if d['standardize'] else ''}; auto T={d['auto_temperature']:g}")
    for col in ("T", "entropy", "one-hot rows", "entropy (std)", "one-hot rows (std)"):
        table.add_column(col, justify="right")
    for row in d["per_temperature"]:
        mark = "> " if abs(row["temperature"] - d["temperature"]) < 1e-9 else ""
        table.add_row(f"{mark}{row['temperature']:g}", f"{row['entropy']:.3f}", f"{100 * row['one_hot_share']:.1f}%",
                      f"{row['standardized_entropy']:.3f}", f"{100 * row['standardized_one_hot_share']:.1f}%")
    return table


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    """Our warnings as one `warning: ...` line; everyone else's as Python formats them."""
    if issubclass(category, DistillWarning):
        return f"warning: {message}\n"
    return _default_formatwarning(message, category, filename, lineno, line)


_default_formatwarning = warnings.formatwarning


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: one clear line and exit 2 for every user error; no tracebacks."""
    warnings.formatwarning = _format_warning
    try:
        app(args=argv, standalone_mode=False)
    except DistillError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (click.exceptions.Abort, typer.Abort):
        err_console.print("aborted")
        sys.exit(130)
    except (click.ClickException, typer.TyperException) as exc:  # usage errors (typer vendors click): one line too
        message = " ".join(exc.format_message().split())
        err_console.print(f"error: {message}; see `distill --help`", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2 if exc.exit_code not in (0,) else 0)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
