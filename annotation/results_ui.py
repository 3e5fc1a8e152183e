"""The Results tab: a study's scores, agreement, QC counts and correlations as tables and plots.

The app calls `build_results_tab(db_path, is_admin, password_box)` inside its `with gr.Tab("Results"):`.
Results are admin data: every event takes the admin password box as input and refuses without a valid one.
API names (for gradio_client): /results_studies, /results_analyze, /results_export.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure

from annotation.analysis import AnalysisResult, QCSettings, format_stat, run_analysis, study_ids
from annotation.errors import AnnotationError

log = logging.getLogger(__name__)
SCORE_COLUMNS = ["model", "method", "dataset", "question", "items", "ratings", "mean", "std", "stderr", "ci_low",
                 "ci_high"]
AGREEMENT_COLUMNS = ["scope", "question", "items", "raters (kappa)", "dropped (kappa)", "Fleiss' kappa (binary)",
                     "Randolph's free-marginal kappa (binary)", "Krippendorff's alpha (ordinal)",
                     "% agreement (binary)", "unanimous (binary)"]
QC_COLUMNS = ["what", "count"]
CORRELATION_COLUMNS = ["metric", "level", "n", "Spearman [CI]", "Kendall tau-b [CI]"]
BREAKDOWN_COLUMNS = ["model", "method", "dataset", "question", "items", "mean", "std", "stderr"]
SHORTCOMING_COLUMNS = ["model", "method", "dataset", "question", "shortcoming", "count", "share"]


def build_results_tab(db_path: str, is_admin: Callable[[str], bool], password_box: gr.Textbox, *,
                      require_admin: Callable[[str, gr.Request | None], None] | None = None) -> None:
    """Build the Results tab contents in the current Blocks context.

    `require_admin(password, request)`, when given, replaces `is_admin`: it raises AnnotationError for a wrong
    password or a client locked out after too many wrong ones (the app's AdminGate).
    """
    if require_admin is None:
        def require_admin(password: str, request: gr.Request | None) -> None:
            if not is_admin(password):
                raise AnnotationError("wrong admin password", field="password")

    gr.Markdown("Sign in on the **Admin** tab first; this tab uses that sign-in. Scores are means of item "
                "scores x100 with bootstrap 95% CIs over items. Quality control runs first; every exclusion "
                "is counted below.")
    with gr.Row(equal_height=True):
        study = gr.Dropdown(label="Study", choices=[], allow_custom_value=True, scale=3, elem_id="sf-results-study")
        refresh = gr.Button("List studies", scale=1, elem_id="sf-results-list")
    list_note = gr.Markdown(elem_id="sf-results-list-msg")
    with gr.Row():
        min_seconds = gr.Number(label="Min seconds per item (0 = off)", value=0, minimum=0)
        min_gold = gr.Number(label="Min gold acceptance 0-1 (0 = off)", value=0, minimum=0, maximum=1)
        gate_filter = gr.Checkbox(label="Exclude wrong gate answers", value=True)
    run = gr.Button("Analyze", variant="primary", elem_id="sf-results-analyze")
    status = gr.Markdown(elem_id="sf-results-status")
    scores = gr.Dataframe(label="Scores per system", headers=SCORE_COLUMNS, interactive=False,
                          elem_id="sf-results-scores")
    with gr.Row():
        # titles live inside the figures: a gr.Plot label floats over the figure's top edge
        score_plot = gr.Plot(show_label=False, elem_id="sf-results-score-plot")
        distribution_plot = gr.Plot(show_label=False, elem_id="sf-results-distribution-plot")
        scatter_plot = gr.Plot(show_label=False, elem_id="sf-results-scatter-plot")
    agreement = gr.Dataframe(label="Agreement", headers=AGREEMENT_COLUMNS, interactive=False)
    with gr.Row():
        qc = gr.Dataframe(label="Quality control", headers=QC_COLUMNS, interactive=False)
        correlations = gr.Dataframe(label="Human vs automatic", headers=CORRELATION_COLUMNS, interactive=False)
    with gr.Accordion("Breakdowns and shortcomings", open=False):
        by_label = gr.Dataframe(label="By gold label", headers=BREAKDOWN_COLUMNS + ["gold_label"], interactive=False)
        by_correct = gr.Dataframe(label="By correct / incorrect prediction", headers=BREAKDOWN_COLUMNS + ["correct"],
                                  interactive=False)
        shortcomings = gr.Dataframe(label="Shortcomings", headers=SHORTCOMING_COLUMNS, interactive=False)
    with gr.Row(equal_height=True):
        fmt = gr.Radio(["csv", "jsonl", "parquet"], value="csv", label="Export format")
        export = gr.Button("Export ratings table", elem_id="sf-results-export")
    export_note = gr.Markdown(elem_id="sf-results-export-msg")
    export_file = gr.File(label="Export", interactive=False)

    def refused(password: str, request: gr.Request | None) -> str | None:
        try:
            require_admin(password, request)
        except AnnotationError as err:
            return f"**Sign in on the Admin tab first.** {err.reason[:1].upper() + err.reason[1:]}."
        return None

    def list_studies(request: gr.Request, password: str):
        refusal = refused(password, request)
        if refusal:
            return gr.Dropdown(choices=[]), refusal
        try:
            found = study_ids(db_path)
        except AnnotationError as err:
            return gr.Dropdown(choices=[]), f"**Error:** {err}"
        choices = [(f"{sid} - {name}" if name else sid, sid) for sid, name in found]
        return (gr.Dropdown(choices=choices, value=found[0][0] if found else None),
                f"{len(found)} studies." if found else "No studies in this database yet.")

    def analyze(request: gr.Request, password: str, study_id: str, seconds: float, gold: float, gate: bool,
                progress=gr.Progress()):
        empty = (pd.DataFrame(columns=SCORE_COLUMNS), pd.DataFrame(columns=AGREEMENT_COLUMNS),
                 pd.DataFrame(columns=QC_COLUMNS), pd.DataFrame(columns=CORRELATION_COLUMNS), None, None, None,
                 pd.DataFrame(columns=BREAKDOWN_COLUMNS + ["gold_label"]),
                 pd.DataFrame(columns=BREAKDOWN_COLUMNS + ["correct"]), pd.DataFrame(columns=SHORTCOMING_COLUMNS))
        refusal = refused(password, request)
        if refusal:
            return (refusal, *empty)
        if not study_id:
            return ("Choose a study first (List studies).", *empty)
        settings = QCSettings(min_seconds=float(seconds or 0), min_gold_acceptance=float(gold or 0),
                              gate_filter=bool(gate))
        try:
            if not 0 <= settings.min_gold_acceptance <= 1 or settings.min_seconds < 0:
                raise AnnotationError("min seconds must be >= 0 and min gold acceptance between 0 and 1")
            result = run_analysis(db_path, study_id, settings,
                                  progress=lambda fraction, desc: progress(fraction, desc=desc))
        except AnnotationError as err:
            return (f"**Error:** {err}", *empty)
        except Exception as err:  # never a traceback in the UI; the log keeps it
            log.exception("analysis failed")
            return (f"**Analysis failed:** {type(err).__name__}: {err}", *empty)
        return (_status_text(result.report), *result_tables(result), *result_plots(result),
                *detail_tables(result.report))

    def export_table(request: gr.Request, password: str, study_id: str, export_format: str, seconds: float,
                     gold: float, gate: bool):
        refusal = refused(password, request)
        if refusal:
            return None, refusal
        if not study_id:
            return None, "Choose a study first (List studies)."
        from annotation.export import export_study

        settings = QCSettings(min_seconds=float(seconds or 0), min_gold_acceptance=float(gold or 0),
                              gate_filter=bool(gate))
        out = Path(tempfile.mkdtemp(prefix="sparsefit-export-")) / f"{study_id}-ratings.{export_format}"
        try:
            export_study(db_path, study_id, export_format, out, settings)
        except AnnotationError as err:
            return None, f"**Error:** {err}"
        return str(out), (f"Exported {out.name}; the protocol snapshot is in "
                          f"{'the Parquet metadata and ' if export_format == 'parquet' else ''}"
                          f"{out.name}.protocol.json next to it.")

    refresh.click(list_studies, [password_box], [study, list_note], api_name="results_studies")
    run.click(analyze, [password_box, study, min_seconds, min_gold, gate_filter],
              [status, scores, agreement, qc, correlations, score_plot, distribution_plot, scatter_plot,
               by_label, by_correct, shortcomings],
              api_name="results_analyze")
    export.click(export_table, [password_box, study, fmt, min_seconds, min_gold, gate_filter],
                 [export_file, export_note], api_name="results_export")


# ---------------------------------------------------------------- tables

def _status_text(report: dict[str, Any]) -> str:
    qc = report["qc"]
    return (f"Study **{report['study']['id']}**: {qc['ratings_kept']} of {qc['ratings_total']} ratings kept, "
            f"{qc['items_rated']} items, {qc['annotators_kept']} annotators.")


def _round(value: Any, digits: int = 2) -> Any:
    return None if value is None else round(float(value), digits)


def result_tables(result: AnalysisResult) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    report = result.report
    scores = pd.DataFrame([[r["model"], r["method"], r["dataset"], r["question"], r["n_items"], r["n_ratings"],
                            _round(r["mean"]), _round(r["std"]), _round(r["stderr"]), _round(r["ci_low"]),
                            _round(r["ci_high"])] for r in report["scores"]], columns=SCORE_COLUMNS)
    agreement = pd.DataFrame([[r["scope"], r["question"], r["items"], r["raters_per_item_for_kappa"],
                               r["items_dropped_for_kappa"], format_stat(r["fleiss_kappa_binary"]),
                               format_stat(r["randolph_free_marginal_kappa_binary"]),
                               format_stat(r["krippendorff_alpha_ordinal"]), format_stat(r["percent_agreement_binary"], 1),
                               r["unanimous_items_binary"]] for r in report["agreement"]],
                             columns=AGREEMENT_COLUMNS)
    qc_report = report["qc"]
    qc_rows = [["ratings in the study", qc_report["ratings_total"]],
               *[[f"excluded: {rule}", count] for rule, count in qc_report["excluded"].items()],
               ["ratings kept", qc_report["ratings_kept"]],
               ["annotators excluded (gold acceptance)", len(qc_report["annotators_excluded"])],
               ["gate answers wrong", qc_report["gate_assignments"]["wrong"]],
               ["items rated after QC", qc_report["items_rated"]]]
    qc = pd.DataFrame(qc_rows, columns=QC_COLUMNS)
    corr = report["correlations"]
    corr_rows = [[r["metric"], "item", r["n"], format_stat(r["spearman"]), format_stat(r["kendall"])] for r in corr["item_level"]]
    corr_rows += [[r["metric"], "system", r["n_systems"], format_stat(r["spearman"]), format_stat(r["kendall"])]
                  for r in corr["system_level"]]
    return scores, agreement, qc, pd.DataFrame(corr_rows, columns=CORRELATION_COLUMNS)


def detail_tables(report: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Breakdowns by gold label and by correctness, and shortcoming frequencies."""
    def breakdown(key: str) -> pd.DataFrame:
        return pd.DataFrame([[r["model"], r["method"], r["dataset"], r["question"], r["n_items"], _round(r["mean"]),
                              _round(r["std"]), _round(r["stderr"]), str(r[key])]
                             for r in report[f"breakdown_by_{key}"]], columns=BREAKDOWN_COLUMNS + [key])
    shortcomings = pd.DataFrame([[r["model"], r["method"], r["dataset"], r["question"], r["label"], r["count"],
                                  _round(r["share"], 3)] for r in report["shortcomings"]],
                                columns=SHORTCOMING_COLUMNS)
    return breakdown("gold_label"), breakdown("correct"), shortcomings


# ---------------------------------------------------------------- plots

def result_plots(result: AnalysisResult) -> tuple[Figure, Figure, Figure]:
    return score_figure(result.report), distribution_figure(result.report), scatter_figure(result)


def score_figure(report: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(5, 3.5), layout="constrained")
    axes = figure.add_subplot()
    rows = report["scores"]
    systems = sorted({(r["model"], r["method"], r["dataset"]) for r in rows})
    questions = sorted({r["question"] for r in rows})
    width = 0.8 / max(len(questions), 1)
    for q_index, question in enumerate(questions):
        xs, means, errors = [], [], [[], []]
        for s_index, system in enumerate(systems):
            row = next((r for r in rows if (r["model"], r["method"], r["dataset"]) == system
                        and r["question"] == question), None)
            if row is None or row["mean"] is None:
                continue
            xs.append(s_index + q_index * width)
            means.append(row["mean"])
            low = row["ci_low"] if row["ci_low"] is not None else row["mean"]
            high = row["ci_high"] if row["ci_high"] is not None else row["mean"]
            errors[0].append(row["mean"] - low)
            errors[1].append(high - row["mean"])
        axes.bar(xs, means, width, yerr=errors, capsize=3, label=f"{question} explanation")
    axes.set_xticks([i + width * (len(questions) - 1) / 2 for i in range(len(systems))],
                    ["\n".join(system) for system in systems], fontsize=7)
    axes.set_ylim(0, 100)
    axes.set_ylabel("human score (x100)")
    axes.set_title("Score per system (95% CI)", fontsize=9)
    if questions:
        axes.legend(fontsize=7)
    return figure


def distribution_figure(report: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(5, 3.5), layout="constrained")
    axes = figure.add_subplot()
    rows = report["rating_distribution"]
    labels = [p["label"] for p in report["study"]["scale"]]
    questions = sorted({r["question"] for r in rows})
    width = 0.8 / max(len(questions), 1)
    for q_index, question in enumerate(questions):
        shares = {r["label"]: r["share"] for r in rows if r["question"] == question}
        axes.bar([i + q_index * width for i in range(len(labels))], [shares.get(label, 0) for label in labels],
                 width, label=f"{question} explanation")
    axes.set_xticks([i + width * (len(questions) - 1) / 2 for i in range(len(labels))], labels, fontsize=8)
    axes.set_ylim(0, min(1.0, max([r["share"] for r in rows], default=0.5) * 1.25))
    axes.set_ylabel("share of ratings")
    axes.set_title("Rating distribution", fontsize=9)
    if questions:
        axes.legend(fontsize=7)
    return figure


def scatter_figure(result: AnalysisResult) -> Figure:
    figure = Figure(figsize=(5, 3.5), layout="constrained")
    axes = figure.add_subplot()
    table = result.item_scores
    metrics = [c for c in table.columns if c.startswith("metric_")]
    metric = "metric_bertscore_f1" if "metric_bertscore_f1" in metrics else (metrics[0] if metrics else None)
    model_rows = table[table["question"] == "model"] if "question" in table else table
    if metric is None or model_rows[metric].notna().sum() == 0:
        axes.text(0.5, 0.5, "no automatic metric in the records", ha="center", va="center")
        axes.set_axis_off()
        return figure
    paired = model_rows.dropna(subset=[metric])
    axes.scatter(paired[metric], paired["human_score"] * 100, s=8, alpha=0.5)
    axes.set_xlabel(metric.removeprefix("metric_"))
    axes.set_ylabel("human score, model expl. (x100)")
    axes.set_title("Human score vs automatic metric", fontsize=9)
    return figure
