"""The HTML of the report: one self-contained page, no scripts, images inlined as base64 PNG."""

from __future__ import annotations

import html
from typing import Any

COLUMNS = [
    ("accuracy", "accuracy", lambda v: f"{100 * v:.2f}%"),
    ("agreement", "agrees w/ teacher", lambda v: f"{100 * v:.1f}%"),
    ("kl_to_teacher", "KL to teacher", lambda v: f"{v:.3f}"),
    ("ece", "ECE", lambda v: f"{v:.3f}"),
    ("params", "params", lambda v: f"{v:,}"),
    ("size_bytes", "size", lambda v: human_bytes(v)),
    ("latency_ms_p50", "latency p50", lambda v: f"{v:.3f} ms"),
    ("latency_ms_p95", "latency p95", lambda v: f"{v:.3f} ms"),
    ("throughput_per_s", "throughput", lambda v: f"{v:,.0f}/s"),
]
# shown when some row has them (task: embedding; runs made before these keys existed have none)
OPTIONAL_COLUMNS = [
    ("throughput_1_per_s", "throughput at batch 1", lambda v: f"{v:,.1f}/s"),
    ("cosine_to_teacher", "cosine to teacher", lambda v: f"{v:.4f}"),
    ("onnx_max_abs_diff", "ONNX max |Δ| vs PyTorch", lambda v: f"{v:.1e}"),  # runs with ONNX variants
    # task: causal_lm (per answer token of the held-out teacher answers; speed in tokens/s)
    ("perplexity", "perplexity", lambda v: f"{v:,.2f}"),
    ("forward_tokens_per_s", "forward", lambda v: f"{v:,.0f} tok/s"),
    ("generate_tokens_per_s", "generation", lambda v: f"{v:,.1f} tok/s"),
]
NLL_COLUMN = ("nll", "NLL (nats/token)", lambda v: f"{v:.3f}")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .sub{color:#666;margin-top:0}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1.2em 0}
.card{flex:1;min-width:180px;border:1px solid #ddd;border-radius:8px;padding:.8em 1em;background:#fafafa}
.card .big{font-size:1.8em;font-weight:600} .card .lbl{color:#666;font-size:.9em}
.ci{color:#777;font-size:.85em} .good{color:#2a7a3b} .bad{color:#b23b3b}
.verdict{padding:.8em 1em;border-left:5px solid #4c72b0;background:#f1f5fb;margin:1em 0}
table{border-collapse:collapse;width:100%;font-size:.92em} th,td{padding:.4em .6em;border-bottom:1px solid #e4e4e4;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f4f4f4}
img{max-width:100%} pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.85em}
"""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n}"


def _cell(m: dict[str, Any], key: str, fmt: Any) -> str:
    """The value, and ± the half-width of its 95% CI when the row is a mean over seeds (`ci95`) with any spread."""
    if m.get(key) is None:
        return "—"
    ci = (m.get("ci95") or {}).get(key)
    if not ci or ci[1] - ci[0] <= 0:
        return html.escape(fmt(m[key]))
    return f'{html.escape(fmt(m[key]))}<span class="ci"> ± {html.escape(fmt((ci[1] - ci[0]) / 2))}</span>'


def _table(models: dict[str, dict[str, Any]]) -> str:
    columns = COLUMNS + [c for c in OPTIONAL_COLUMNS if any(m.get(c[0]) is not None for m in models.values())]
    if any("perplexity" in m for m in models.values()):
        columns.insert(1, NLL_COLUMN)
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in columns)
    rows = []
    for name, m in models.items():
        cells = "".join(f"<td>{_cell(m, key, fmt)}</td>" for key, _, fmt in columns)
        seeds = f' <span class="ci">({m["n_seeds"]} seeds)</span>' if m.get("n_seeds") else ""
        note = f'<br><span class="ci">{html.escape(m["note"])}</span>' if m.get("note") else ""  # compressed variants
        rows.append(f"<tr><td><b>{html.escape(name)}</b>{seeds}{note}</td>{cells}</tr>")
    return f"<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"


def seeds_section(report: dict[str, Any]) -> str:
    """With `train.seeds`: how the means were formed, and the paired gain seed by seed."""
    gain, seeds = report.get("gain"), report.get("seeds")
    if not gain or not seeds:
        return ""
    per = "".join(f"<tr><td>{s}</td><td>{100 * report['models']['scratch']['per_seed'][str(s)]['accuracy']:.2f}%</td>"
                  f"<td>{100 * report['models']['distilled']['per_seed'][str(s)]['accuracy']:.2f}%</td>"
                  f"<td>{100 * g:+.2f}</td></tr>" for s, g in zip(seeds, gain["per_seed"]))
    ci = "" if gain.get("lo") is None else (f"; 95% CI {100 * gain['lo']:+.2f} to {100 * gain['hi']:+.2f}, "
                                            f"t = {gain['t']:.2f}, p = {gain['p']:.3g}")
    return (f"<h2>Seeds</h2><p>The students (alone and distilled) were trained once per seed ({len(seeds)} seeds); "
            "each seed's pair starts from the same initial weights and sees the same data order, so the gain is paired. "
            "The teacher was trained once. Table values are means; ± is the half-width of the 95% t-interval of the "
            f"mean. Paired gain in accuracy points: {100 * gain['mean']:+.2f}{ci}.</p>"
            "<table><tr><th>seed</th><th>student alone</th><th>distilled</th><th>gain (points)</th></tr>"
            f"{per}</table>")


def _cards(models: dict[str, dict[str, Any]]) -> str:
    t, d = models.get("teacher"), models.get("distilled")
    if not t or not d:
        return ""
    cards = []
    if t.get("params") and d.get("params"):
        cards.append((f"{t['params'] / d['params']:.1f}× smaller", "parameters, student vs teacher", "good"))
    if t.get("latency_ms_p50") and d.get("latency_ms_p50"):
        cards.append((f"{t['latency_ms_p50'] / d['latency_ms_p50']:.1f}× faster", "batch-1 latency p50", "good"))
    if t.get("accuracy") is not None and d.get("accuracy") is not None:
        drop = 100 * (d["accuracy"] - t["accuracy"])
        cards.append((f"{drop:+.2f} pts", "accuracy vs teacher", "good" if drop >= 0 else "bad"))
    s = models.get("scratch")
    if s and s.get("accuracy") is not None and d.get("accuracy") is not None:
        gain = 100 * (d["accuracy"] - s["accuracy"])
        cards.append((f"{gain:+.2f} pts", "distilled vs student alone", "good" if gain > 0 else "bad"))
    if t.get("generate_tokens_per_s") and d.get("generate_tokens_per_s"):
        cards.append((f"{d['generate_tokens_per_s'] / t['generate_tokens_per_s']:.1f}× faster", "generation tokens/s",
                      "good"))
    if s and s.get("perplexity") and d.get("perplexity"):
        better = d["nll"] <= s["nll"]
        cards.append((f"{d['nll'] - s['nll']:+.3f} nats", "held-out NLL, distilled vs student alone",
                      "good" if better else "bad"))
    if d.get("agreement") is not None:
        cards.append((f"{100 * d['agreement']:.1f}%", "top-1 agreement with teacher", ""))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="big {c}">{html.escape(v)}</div><div class="lbl">{html.escape(lbl)}</div></div>'
        for v, lbl, c in cards
    ) + "</div>"


def _img(images: dict[str, str], key: str) -> str:
    return f'<img alt="{key}" src="data:image/png;base64,{images[key]}">' if key in images else ""


def diagnostics_section(d: dict[str, Any] | None) -> str:
    """The teacher diagnostics (`report.json` key `diagnostics`): logit scale, accuracy, softened-target entropy and
    one-hot share per candidate T (raw and standardised logits), the chosen T marked, and the warnings."""
    if not d or "per_temperature" not in d:  # none for task: embedding (no soft targets)
        return ""
    acc = "" if d.get("accuracy") is None else f", accuracy {100 * d['accuracy']:.1f}% on its {d.get('labelled')} labelled rows"
    head = (f"On {d.get('sample')} training examples the teacher's logits have a mean row std of "
            f"{d.get('logit_std', 0):.2f} and a mean row max&minus;min of {d.get('logit_range', 0):.2f}{acc}. "
            f"A row counts as one-hot when its top-1 probability exceeds 0.999; entropy in nats (max "
            f"{d.get('max_entropy', 0):.2f}). The run used T = {d.get('temperature', 0):g}"
            f"{' (temperature: auto)' if d.get('temperature_auto') else ''}"
            f"{', standardised logits' if d.get('standardize') else ''}; temperature: auto would pick "
            f"{d.get('auto_temperature', 0):g}.")
    rows = []
    for r in d.get("per_temperature", []):
        chosen = abs(r["temperature"] - d.get("temperature", -1)) < 1e-9
        cells = [f"{'&#9654; ' if chosen else ''}{r['temperature']:g}", f"{r['entropy']:.3f}",
                 f"{100 * r['one_hot_share']:.1f}%", f"{r['standardized_entropy']:.3f}",
                 f"{100 * r['standardized_one_hot_share']:.1f}%"]
        style = ' style="font-weight:bold"' if chosen else ""
        rows.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = ("<table><tr><th>T</th><th>entropy</th><th>one-hot rows</th><th>entropy (standardised)</th>"
             "<th>one-hot rows (standardised)</th></tr>" + "".join(rows) + "</table>")
    warns = "".join(f'<div class="verdict">warning: {html.escape(w)}</div>' for w in d.get("warnings", []))
    return f"<h2>Teacher diagnostics</h2><p>{head}</p>{table}{warns}"


def generations_section(g: dict[str, Any] | None) -> str:
    """task: causal_lm: greedy generations of every model for a few held-out prompts, side by side."""
    if not g or not g.get("examples"):
        return ""
    settings = g.get("settings", {})
    blocks = []
    for ex in g["examples"]:
        names = [k for k in ex if k not in ("prompt", "reference")]
        cells = "".join(f"<tr><td><b>{html.escape(n)}</b></td><td style='text-align:left;white-space:pre-wrap'>"
                        f"{html.escape(str(ex[n]))}</td></tr>" for n in names)
        blocks.append(f"<h3 style='font-size:1em'>{html.escape(str(ex.get('prompt', '')).strip())}</h3><table>{cells}"
                      "</table>")
    return (f"<h2>Generations (held-out prompts)</h2><p>{html.escape(str(settings.get('decoding', 'greedy')))} decoding, "
            f"at most {html.escape(str(settings.get('max_new_tokens', '?')))} new tokens; the teacher's answers are "
            f"what the students were trained to imitate on other prompts.</p>{''.join(blocks)}")


def page(report: dict[str, Any], images: dict[str, str], verdict: str, config_escaped: str) -> str:
    models = report.get("models", {})
    recipe = report.get("recipe", {})
    ds = report.get("dataset", {})
    sp = report.get("speed_settings", {})
    title = f"distill report — {recipe.get('name', 'run')}"
    sub = (f"dataset {ds.get('name', '?')} ({ds.get('train_size', '?')} train / {ds.get('test_size', '?')} test) · "
           f"method {recipe.get('method', '?')} · T={recipe.get('temperature', '?')} · alpha={recipe.get('alpha', '?')} · "
           + (f"seeds {', '.join(map(str, recipe['seeds']))} (students), seed {recipe.get('seed', '?')} (data, teacher)"
              if recipe.get("seeds") else f"seed {recipe.get('seed', '?')}"))
    frac = recipe.get("labelled_fraction", 1.0)
    if frac is not None and frac < 1.0:
        sub += (f" · students saw labels on {100 * frac:.0f}% of the training set and the teacher's soft targets on all"
                " of it (the teacher saw every label)")
    speed_note = (f"Latency: batch 1 on {sp.get('device', 'cpu')}, {sp.get('threads', '?')} thread(s), "
                  f"{sp.get('warmup', '?')} warm-up + {sp.get('latency_runs', '?')} timed runs; throughput at batch "
                  f"{sp.get('throughput_batch', '?')}. Agreement and KL are measured against the teacher on the test set.")
    if report.get("task") == "embedding":
        speed_note += (" Task: embedding. The models output sentence embeddings; accuracy, agreement, KL and ECE are "
                       "those of a logistic-regression probe fitted on each model's frozen validation-set embeddings "
                       "and scored on the test set, and the student alone is the student as initialised (without a "
                       "teacher there is nothing to train it on).")
    if report.get("task") == "causal_lm":
        speed_note = (f"Task: causal_lm. Accuracy, NLL and perplexity are next-token scores on the answer tokens of the "
                      f"held-out prompts (the teacher's own greedy answers); agreement (same top-1 token) and KL(teacher "
                      f"‖ model) are per answer token at T = 1. Speed on {sp.get('device', 'cpu')}, "
                      f"{sp.get('threads', '?')} thread(s), median of {sp.get('runs', '?')} calls: forward over a batch "
                      f"of {sp.get('batch', '?')} prompts; greedy generation of {sp.get('new_tokens', '?')} new tokens "
                      f"for each of them (KV cache); latency: one prompt's forward.")
    explorer = ""
    if "explorer" in images and report.get("task") != "embedding":
        explorer = f"""<h2>Why temperature?</h2>
<p>A trained teacher is usually so confident that at T = 1 its distribution is almost one-hot: it says little more than
the label. Dividing the logits by a temperature T &gt; 1 lifts the small probabilities — which wrong classes the
teacher finds <i>plausible</i> — into view. That "dark knowledge" is what the student learns from the soft loss. The
gradient of the softened loss shrinks as 1/T², which is why the soft term is multiplied by T². Rows run from the
teacher's most confident test example to its least; H is the entropy in nats.</p>{_img(images, 'explorer')}"""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1><p class="sub">{html.escape(sub)}</p>
{_cards(models)}
<div class="verdict">{html.escape(verdict)}</div>
<h2>Models</h2>{_table(models)}<p class="sub">{html.escape(speed_note)}</p>
{seeds_section(report)}
<h2>What you gain and what you lose</h2>{_img(images, 'tradeoffs')}
<h2>Training</h2>{_img(images, 'curves')}
<h2>Calibration</h2><p>Bars: accuracy within each confidence bin; a calibrated model's bars follow the diagonal.</p>
{_img(images, 'reliability')}
{diagnostics_section(report.get("diagnostics"))}
{generations_section(report.get("generations"))}
{explorer}
<h2>Recipe (resolved)</h2><pre>{config_escaped}</pre>
</body></html>"""
