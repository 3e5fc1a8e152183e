"""The Gradio app: Demo, Annotate, Admin and Results tabs.

Public API (gradio_client) for the annotator flow, each returning a "view" dict (see annotation/flow.py
and README.md): `annotator_start`, `annotator_answer_gate`, `annotator_submit`. Admin events
are private (not callable by gradio clients) and check the password themselves; the demo's events are
`demo_load_model` and `demo_predict`. Torch is imported only when the demo loads a model.
"""

from __future__ import annotations

import html
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from annotation import admin
from annotation.errors import AnnotationError
from annotation.flow import AnnotatorFlow, field_title
from annotation.protocol import list_presets
from annotation.store import Store, StudySettings
from annotation.backend import INPUT_FIELDS

CUSTOM_PRESET = "custom (upload a preset file)"
DEMO_DATASETS = ["esnli", "comve", "ecqa", "sbic", "sample-nli"]
DEMO_MAX_FIELDS = 6
BUILTIN_MODELS = ["default", "tiny-t5", "tiny-causal"]
PRIVATE = {"api_visibility": "private"}
FAST = {**PRIVATE, "queue": False}  # annotator events: no queue round trip (see _annotate_tab)

CSS = """
.sf-fields {display: grid; gap: .6rem; margin: .2rem 0 .4rem;}
.sf-field {border-left: 4px solid var(--color-accent); padding: .35rem .8rem;
  background: var(--block-background-fill);}
.sf-name {font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; opacity: .7;}
.sf-text {font-size: 1.1rem; white-space: pre-wrap;}
.sf-expl {font-size: 1.1rem; white-space: pre-wrap; padding: .5rem .8rem; min-height: 5.5rem;
  border: 1px solid var(--border-color-primary); border-radius: 6px;}
.sf-slot {font-weight: 600; margin-bottom: .3rem;}
.sf-answer {font-size: 1.05rem; margin: .3rem 0;}
.sf-progress {font-weight: 600; text-align: right;}
.sf-msg {padding: .3rem .6rem; border-radius: 4px;}
.sf-msg.err {background: #fde8e8; color: #8a1c1c;}
.sf-msg.info {background: #e8f4fd; color: #0b4a6f;}
.sf-code {font-size: 1.6rem; font-family: monospace; letter-spacing: .1em;}
.sf-focus {outline: 3px solid var(--color-accent); outline-offset: 4px; border-radius: 6px;}
"""

# Keyboard: 1-9 choose a gate option or a scale point (for the clicked explanation, else A then B),
# Enter presses the visible Continue/Submit button. Typing in a text field is never intercepted.
KEYBOARD_JS = """
() => {
  const visible = (el) => el && el.offsetParent !== null;
  let clickedSlot = null;  // an explanation the annotator clicked; else keys go to the first unrated one
  const highlight = (slot) => {
    for (const s of ['a', 'b']) {
      const box = document.getElementById('sf-block-' + s);
      if (box) box.classList.toggle('sf-focus', s === slot);
    }
  };
  const checked = (groupId) => {
    const group = document.getElementById(groupId);
    return group && group.querySelector('input[type=radio]:checked');
  };
  const nextSlot = () => {
    const hasB = visible(document.getElementById('sf-rating-b'));
    if (!checked('sf-rating-a') || !hasB) return 'a';
    return 'b';
  };
  document.addEventListener('click', (event) => {
    for (const s of ['a', 'b']) {
      const box = document.getElementById('sf-block-' + s);
      if (box && box.contains(event.target)) { clickedSlot = s; highlight(s); }
    }
  }, true);
  const pick = (groupId, index) => {
    const group = document.getElementById(groupId);
    if (!visible(group)) return false;
    const inputs = group.querySelectorAll('input[type=radio]');
    if (index >= inputs.length) return false;
    inputs[index].click();
    return true;
  };
  document.addEventListener('keydown', (event) => {
    const target = event.target;
    const typing = target && (target.tagName === 'TEXTAREA' ||
      (target.tagName === 'INPUT' && target.type !== 'radio' && target.type !== 'checkbox'));
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    if (/^[1-9]$/.test(event.key)) {
      const index = Number(event.key) - 1;
      if (pick('sf-gate', index)) { event.preventDefault(); event.stopPropagation(); return; }
      const slot = clickedSlot || nextSlot();
      if (pick('sf-rating-' + slot, index)) {
        event.preventDefault();
        event.stopPropagation();
        clickedSlot = null;
        highlight(nextSlot());
      }
      return;
    }
    if (event.key === 'Enter') {
      for (const id of ['sf-gate-continue', 'sf-submit']) {
        const button = document.getElementById(id);
        if (visible(button)) {
          event.preventDefault();
          event.stopPropagation();
          clickedSlot = null;
          highlight(null);
          button.click();
          return;
        }
      }
    }
  }, true);  // capture phase: a focused checkbox would otherwise toggle on Enter before we submit
}
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def message_html(text: str, error: bool = False) -> str:
    return f"<div class='sf-msg {'err' if error else 'info'}'>{esc(text)}</div>" if text else ""


def fields_html(fields: list[dict[str, str]]) -> str:
    rows = "".join(f"<div class='sf-field'><div class='sf-name'>{esc(f['name'])}</div>"
                   f"<div class='sf-text'>{esc(f['text'])}</div></div>" for f in fields)
    return f"<div class='sf-fields'>{rows}</div>"


def launch_options() -> dict[str, Any]:
    """What `demo.launch` needs besides host/port (Gradio 6 takes css/js there)."""
    return {"css": CSS, "js": KEYBOARD_JS, "theme": gr.themes.Soft()}


def build_app(db_path: str | Path, admin_password: str, *, models_dir: str | Path | None = None,
              quickstart_predictions: str | Path | None = None, base_url: str = "",
              with_demo: bool = True, banner: Callable[[], str] | None = None) -> gr.Blocks:
    """The whole app. `models_dir` defaults to the backend's ($SPARSEFIT_MODELS_DIR or models/).
    `with_demo=False` leaves out the Demo tab and its endpoints; `banner` (e.g. the quickstart build's
    progress) is shown at the top and refreshed while it has something to say."""
    models_dir = Path(models_dir) if models_dir else admin.default_models_dir()
    quickstart_predictions = Path(quickstart_predictions or admin.quickstart_predictions())
    store = Store(db_path)
    flow = AnnotatorFlow(store)
    gate = admin.AdminGate(admin_password)
    with gr.Blocks(title="SparseFit: explanations") as demo:
        if banner is not None:
            _banner(demo, banner)
        with gr.Tabs(selected="demo" if with_demo else "annotate") as tabs:
            if with_demo:
                with gr.Tab("Demo", id="demo"):
                    from annotation.workers import DemoWorker
                    _demo_tab(Path(models_dir), DemoWorker())
            with gr.Tab("Annotate", id="annotate"):
                annotate = _annotate_tab(flow)
            with gr.Tab("Admin", id="admin"):
                password_box = _admin_tab(store, gate, Path(quickstart_predictions), base_url)
            with gr.Tab("Results", id="results"):
                _results_tab(str(db_path), gate, password_box)
        annotator_style = gr.HTML("", padding=False)
        demo.load(_read_link, None, [*annotate.link, tabs, annotator_style], **PRIVATE) \
            .then(annotate.start, annotate.link, annotate.view, **PRIVATE) \
            .then(annotate.render, [annotate.view, annotate.assignment], annotate.screen, **PRIVATE)
    return demo


# ------------------------------------------------------------------------ annotate


def _read_link(request: gr.Request):
    """Link parameters from the URL; annotators see only the Annotate tab."""
    query = dict(request.query_params) if request else {}
    values = [query.get(k, "") for k in ("token", "study", "PROLIFIC_PID", "STUDY_ID", "SESSION_ID", "key")]
    is_annotator = bool(values[0] or values[2])
    # Gradio 6 ignores visibility updates of tabs, so annotators get a style rule hiding the tab bar
    style = "<style>.tab-wrapper {display: none !important;}</style>" if is_annotator else ""
    return (*values, gr.Tabs(selected="annotate") if is_annotator else gr.skip(), style)


def _annotate_tab(flow: AnnotatorFlow) -> "AnnotateTab":
    token = gr.Textbox(visible=False)
    study = gr.Textbox(visible=False)
    pid, prolific_study, session = gr.Textbox(visible=False), gr.Textbox(visible=False), gr.Textbox(visible=False)
    key = gr.Textbox(visible=False)  # the study's entry key from an open (Prolific) link
    assignment = gr.Textbox(visible=False)
    view = gr.JSON(visible=False)

    with gr.Row():
        title = gr.Markdown("### Rate explanations")
        progress = gr.HTML("", elem_classes="sf-progress", elem_id="sf-progress")
    message = gr.HTML("", elem_id="sf-message", visible=False)
    with gr.Accordion("Instructions", open=True, elem_id="sf-instructions") as instructions_box:
        instructions = gr.Markdown("")
    with gr.Column(visible=False) as entry:
        gr.Markdown("Paste the code from your personal link (the part after `token=`).")
        token_entry = gr.Textbox(label="Link code", max_lines=1)
        entry_button = gr.Button("Start")
    with gr.Column(visible=False) as item_box:
        inputs = gr.HTML("", elem_id="sf-inputs")
        with gr.Column(visible=False) as gate_box:
            gate_question = gr.HTML("")
            gate_radio = gr.Radio([], label="Your answer", elem_id="sf-gate")
            gate_button = gr.Button("Continue (Enter)", variant="primary", elem_id="sf-gate-continue")
        with gr.Column(visible=False) as rate_box:
            answer = gr.HTML("", elem_id="sf-answer")
            question = gr.HTML("")
            with gr.Row(equal_height=False):
                with gr.Column(elem_id="sf-block-a"):
                    expl_a = gr.HTML("", elem_id="sf-expl-a")
                    rating_a = gr.Radio([], label="Rating for Explanation A", elem_id="sf-rating-a")
                    short_a = gr.CheckboxGroup([], label="Shortcomings of Explanation A", visible=False,
                                               elem_id="sf-short-a")
                with gr.Column(elem_id="sf-block-b") as block_b:
                    expl_b = gr.HTML("", elem_id="sf-expl-b")
                    rating_b = gr.Radio([], label="Rating for Explanation B", elem_id="sf-rating-b")
                    short_b = gr.CheckboxGroup([], label="Shortcomings of Explanation B", visible=False,
                                               elem_id="sf-short-b")
            comment = gr.Textbox(label="Comment (optional)", lines=2, max_lines=6, visible=False)
            submit = gr.Button("Submit (Enter)", variant="primary", elem_id="sf-submit")
    done = gr.HTML("", visible=False, elem_id="sf-done")

    screen = [token, assignment, title, progress, message, instructions_box, instructions, entry, item_box,
              inputs, gate_box, gate_question, gate_radio, rate_box, answer, question, expl_a, rating_a, short_a,
              block_b, expl_b, rating_b, short_b, comment, done]

    def render(current: dict | None, previous_assignment: str):
        return _render(current or {}, previous_assignment, dict(zip(
            ["token", "assignment", "title", "progress", "message", "instructions_box", "instructions",
             "entry", "item_box", "inputs", "gate_box", "gate_question", "gate_radio", "rate_box", "answer",
             "question", "expl_a", "rating_a", "short_a", "block_b", "expl_b", "rating_b", "short_b", "comment",
             "done"], screen)))

    def start(token_value: str, study_value: str, pid_value: str, prolific_study_value: str,
              session_value: str, key_value: str = "") -> dict:
        return flow.start(token_value or "", study_value or "", pid_value or "", prolific_study_value or "",
                          session_value or "", key=key_value or "")

    # The browser sends its widgets' values; scripts use the string-typed API endpoints below (or the
    # JSON routes of annotation/server.py, which skip Gradio's queue).
    link = [token, study, pid, prolific_study, session, key]
    # Annotator events skip Gradio's queue (queue=False): each is a few ms of store work, and the queue's
    # bookkeeping and event stream cost more server CPU than the work itself.
    entry_button.click(lambda code: (code or "").strip(), token_entry, token, **FAST) \
        .then(start, link, view, **FAST) \
        .then(render, [view, assignment], screen, **FAST)
    gate_button.click(flow.answer_gate, [token, assignment, gate_radio], view, **FAST) \
        .then(render, [view, assignment], screen, **FAST)
    submit.click(flow.submit, [token, assignment, rating_a, rating_b, short_a, short_b, comment], view, **FAST) \
        .then(render, [view, assignment], screen, **FAST)

    def annotator_start(token: str = "", study: str = "", prolific_pid: str = "", prolific_study_id: str = "",
                        session_id: str = "", key: str = "") -> dict:
        """Open or resume a session: give `token`, or `study` + its entry `key` + `prolific_pid` (+ Prolific
        STUDY_ID and SESSION_ID). Returns the current view (stage gate | rate | done | error)."""
        return start(token, study, prolific_pid, prolific_study_id, session_id, key)

    def annotator_answer_gate(token: str, assignment_id: str, answer: str) -> dict:
        """The annotator's own answer to the task (one of view.gate.options); returns the next view."""
        return flow.answer_gate(token, assignment_id, answer)

    def annotator_submit(token: str, assignment_id: str, rating_a: str, rating_b: str = "",
                         shortcomings_a: str = "", shortcomings_b: str = "", comment: str = "") -> dict:
        """Ratings (scale values) of Explanation A and B, shortcomings as a JSON list or comma-separated
        values, optional comment; returns the next view (or the same item with ok=false and a message)."""
        return flow.submit(token, assignment_id, rating_a, rating_b, _value_list(shortcomings_a),
                           _value_list(shortcomings_b), comment)

    for endpoint in (annotator_start, annotator_answer_gate, annotator_submit):
        # no concurrency cap: the store serialises writes itself, and reads need not wait for each other
        gr.api(endpoint, api_name=endpoint.__name__, concurrency_limit=None)
    return AnnotateTab(link=link, view=view, assignment=assignment, screen=screen, start=start, render=render)


@dataclass
class AnnotateTab:
    link: list
    view: gr.JSON
    assignment: gr.Textbox
    screen: list
    start: Callable
    render: Callable


def _value_list(text: str | list | None) -> list[str]:
    if isinstance(text, list):
        return [str(v) for v in text]
    text = (text or "").strip()
    if text.startswith("["):
        try:
            return [str(v) for v in json.loads(text)]
        except json.JSONDecodeError as err:
            raise gr.Error(f"shortcomings: invalid JSON list ({err.msg})") from err
    return [part.strip() for part in text.split(",") if part.strip()]


def _render(view: dict, previous_assignment: str, c: dict[str, Any]) -> dict:
    """Turn a view into screen updates. On a rejected submission of the same item, keep the choices."""
    stage = view.get("stage", "error")
    is_error = not view.get("ok", False)
    text = view.get("message", "")
    updates: dict = {c["message"]: gr.HTML(message_html(text, is_error), visible=bool(text))}
    same_item = str(view.get("assignment_id", "")) == str(previous_assignment or "")
    if is_error and stage in ("gate", "rate") and same_item:
        return updates
    progress = view.get("progress", {})
    updates.update({
        c["token"]: view.get("token", gr.skip()) if view.get("token") else gr.skip(),
        c["assignment"]: str(view.get("assignment_id", "")),
        c["title"]: f"### {esc(view.get('title', 'Rate explanations'))}",
        c["progress"]: esc(progress.get("text", "")),
        c["instructions_box"]: gr.Accordion(visible=stage != "error" or bool(view.get("instructions_md")),
                                            open=progress.get("done", 0) == 0),
        c["instructions"]: view.get("instructions_md", ""),
        c["entry"]: gr.Column(visible=stage == "error" and not view.get("token")),
        c["item_box"]: gr.Column(visible=stage in ("gate", "rate")),
        c["gate_box"]: gr.Column(visible=stage == "gate"),
        c["rate_box"]: gr.Column(visible=stage == "rate"),
        c["done"]: gr.HTML(_done_html(view), visible=stage == "done"),
    })
    if stage in ("gate", "rate"):
        updates[c["inputs"]] = fields_html(view.get("inputs", []))
    if stage == "gate":
        gate = view["gate"]
        choices = [(f"{gate['option_text'].get(o, o)}  ({i})", o) for i, o in enumerate(gate["options"], 1)]
        updates.update({c["gate_question"]: f"<div class='sf-answer'><b>{esc(gate['question'])}</b></div>",
                        c["gate_radio"]: gr.Radio(choices=choices, value=None)})
    if stage == "rate":
        updates.update(_rate_updates(view, c))
    return updates


def _rate_updates(view: dict, c: dict[str, Any]) -> dict:
    explanations = view["explanations"]
    scale = [(f"{p['label']}  ({p['key'] or i})", p["value"]) for i, p in enumerate(view["scale"], 1)]
    shortcomings = [(s["label"], s["value"]) for s in view["shortcomings"]]
    answer = view.get("answer", "")
    answer_text = view.get("answer_text") or answer
    answer_line = f"<div class='sf-answer'>Answer: <b>{esc(answer_text)}</b></div>" if answer else ""
    if view.get("gate_answer") and answer and view["gate_answer"].lower() != answer.lower():
        answer_line += "<div class='sf-answer'>(Your answer was different; please rate as if this answer " \
                       "were correct.)</div>"
    updates = {c["answer"]: answer_line,
               c["question"]: f"<div class='sf-answer'>{esc(view['question'])}</div>",
               c["comment"]: gr.Textbox(value="", visible=view.get("comment", False)),
               c["block_b"]: gr.Column(visible=len(explanations) > 1)}
    for index, slot in enumerate("ab"):
        entry = explanations[index] if index < len(explanations) else {"slot": slot.upper(), "text": ""}
        own_answer = (f"<div class='sf-answer'>Answer: <b>{esc(entry.get('answer_text') or entry['answer'])}</b></div>"
                      if entry.get("answer") else "")
        updates.update({
            c[f"expl_{slot}"]: f"<div class='sf-slot'>Explanation {esc(entry['slot'])}</div>{own_answer}"
                               f"<div class='sf-expl'>{esc(entry['text'])}</div>",
            c[f"rating_{slot}"]: gr.Radio(choices=scale, value=None),
            c[f"short_{slot}"]: gr.CheckboxGroup(choices=shortcomings, value=[], visible=bool(shortcomings)),
        })
    return updates


def _done_html(view: dict) -> str:
    if view.get("stage") != "done":
        return ""
    parts = [f"<h2>{esc(view.get('thanks', 'Thank you!'))}</h2>"]
    if view.get("completion_code"):
        parts.append(f"<p>Your completion code:</p><p class='sf-code' id='sf-completion-code'>"
                     f"{esc(view['completion_code'])}</p>")
    if view.get("completion_url"):
        parts.append(f"<p><a href='{esc(view['completion_url'])}'>Return to Prolific to finish</a></p>")
    return "".join(parts)


# ------------------------------------------------------------------------ admin


def _base_url(request: gr.Request | None, configured: str) -> str:
    if configured.strip():
        return configured.strip().rstrip("/")
    headers = request.headers if request else {}
    host = headers.get("x-forwarded-host") or headers.get("host") or "localhost:7860"
    scheme = headers.get("x-forwarded-proto") or "http"
    return f"{scheme}://{host}"


def _admin_tab(store: Store, gate: admin.AdminGate, quickstart_predictions: Path, base_url: str) -> gr.Textbox:
    with gr.Row():
        password = gr.Textbox(label="Admin password", type="password", scale=3, elem_id="sf-admin-password")
        sign_in = gr.Button("Sign in / refresh", scale=1, elem_id="sf-admin-sign-in")
    status = gr.HTML("", elem_id="sf-admin-status")
    study_choice = gr.Dropdown([], label="Study", allow_custom_value=True, interactive=True)
    with gr.Accordion("Create a study", open=False):
        with gr.Row():
            upload = gr.File(label="Predictions file (.jsonl)", file_types=[".jsonl"], type="filepath")
            path_box = gr.Textbox(label="…or its path on the server", placeholder="models/runs/x/predictions.jsonl",
                                  elem_id="sf-admin-path")
        with gr.Row():
            preset = gr.Dropdown(list_presets() + [CUSTOM_PRESET], value="feb", label="Protocol preset")
            preset_file = gr.File(label="Custom preset (.json)", file_types=[".json"], type="filepath")
            name = gr.Textbox(label="Study name (optional)")
        with gr.Row():
            items_per_page = gr.Number(10, label="Items per annotator page", precision=0, minimum=1)
            per_item = gr.Number(3, label="Annotators per item", precision=0, minimum=1)
            per_label = gr.Number(2, label="Items per label (0 = all)", precision=0, minimum=0)
            seed = gr.Number(0, label="Seed", precision=0)
            abandon = gr.Number(30, label="Abandon after (minutes)", precision=0, minimum=1)
            only_correct = gr.Checkbox(True, label="Only correctly predicted items")
        create = gr.Button("Create study", variant="primary", elem_id="sf-admin-create")
    with gr.Accordion("Annotator links", open=False):
        with gr.Row():
            count = gr.Number(3, label="How many new annotators", precision=0, minimum=1)
            base_box = gr.Textbox(value=base_url, label="Base URL (empty = this server)")
            add = gr.Button("Add annotators", elem_id="sf-admin-add")
        links = gr.Textbox(label="Links (one per annotator; send each person their own)", lines=4,
                           interactive=False, buttons=["copy"], elem_id="sf-admin-links")
        prolific = gr.Textbox(label="Prolific study URL (Prolific fills in the placeholders)", interactive=False,
                              buttons=["copy"])
    with gr.Accordion("Progress", open=True):
        summary = gr.JSON(label="Study")
        per_annotator = gr.Dataframe(label="Per annotator", interactive=False)
    with gr.Accordion("Export", open=False):
        with gr.Row():
            fmt = gr.Radio(["csv", "jsonl", "parquet"], value="csv", label="Format")
            export_button = gr.Button("Export")
        export_file = gr.File(label="Download", interactive=False)
    with gr.Accordion("Quickstart study", open=False):
        gr.Markdown("Build the quickstart predictions with the default model (takes minutes) and create "
                    "the demo study from them.")
        build = gr.Button("Build quickstart predictions")

    def guarded(action):
        """Run an admin action: wrong password or bad input → a message, never a traceback."""
        def run(secret, *args):
            try:
                gate.require(secret)
                return action(*args)
            except AnnotationError as err:
                return _admin_error(str(err))
        return run

    # Gradio injects gr.Request / gr.Progress by signature, so these two get explicit event functions
    def add_annotators_event(secret, study_id, how_many, base, request: gr.Request):
        return guarded(add_annotators)(secret, study_id, how_many, base, request)

    def build_quickstart_event(secret, progress=gr.Progress()):
        return guarded(build_quickstart)(secret, progress)

    def refresh(study_id: str):
        studies = store.studies()
        ids = [s["id"] for s in studies]
        chosen = study_id if study_id in ids else (ids[-1] if ids else None)
        table, rows = ({}, []) if chosen is None else admin.progress_rows(store, chosen)
        return {status: message_html(f"{len(ids)} studies in {store.path}."),
                study_choice: gr.Dropdown(choices=[(f"{s['id']} ({s['items']} items, {s['preset']})", s["id"])
                                                   for s in studies], value=chosen),
                summary: table, per_annotator: rows or None}

    def create_study(uploaded, typed_path, preset_name, preset_upload, study_name, page, per, label_n, seed_n,
                     minutes, correct_only):
        source = uploaded or (typed_path or "").strip()
        if not source:
            raise AnnotationError("upload a predictions file or give its path", field="predictions")
        chosen_preset = preset_name
        if preset_name == CUSTOM_PRESET:
            if not preset_upload:
                raise AnnotationError("upload the custom preset file (.json)", field="preset")
            chosen_preset = preset_upload
        study_id = store.create_study(source, StudySettings(
            preset=chosen_preset, items_per_page=int(page), annotators_per_item=int(per),
            only_correct=bool(correct_only), per_label=int(label_n), seed=int(seed_n or 0),
            name=(study_name or "").strip() or None, abandon_minutes=int(minutes)))
        updates = refresh(study_id)
        updates[status] = message_html(f"Created study {study_id} with "
                                       f"{store.study_progress(study_id)['items']} items.")
        return updates

    def add_annotators(study_id, how_many, base, request):
        made = store.add_annotators(_need_study(study_id), int(how_many or 0))
        root = _base_url(request, base or "")
        updates = refresh(study_id)
        updates.update({links: "\n".join(admin.annotator_link(root, a.token) for a in made),
                        prolific: admin.prolific_link(root, study_id, store.study(study_id)["entry_key"]),
                        status: message_html(f"Added {len(made)} annotators to {study_id}.")})
        return updates

    def export_study(study_id, chosen_format):
        out = Path(tempfile.mkdtemp(prefix="sparsefit-export-")) / f"{_need_study(study_id)}.{chosen_format}"
        path = admin.export(store.path, study_id, chosen_format, out)
        return {export_file: str(path), status: message_html(f"Exported {study_id} as {chosen_format}.")}

    def build_quickstart(progress):
        study_id = admin.build_quickstart(store, progress=lambda fraction, text: progress(fraction, desc=text))
        updates = refresh(study_id)
        updates[status] = message_html(f"Quickstart study {study_id} is ready.")
        return updates

    def _admin_error(text: str) -> dict:
        return {status: message_html(text, error=True)}

    outputs = {status, study_choice, summary, per_annotator, links, prolific, export_file}
    sign_in.click(guarded(refresh), [password, study_choice], outputs, **PRIVATE)
    study_choice.input(guarded(refresh), [password, study_choice], outputs, **PRIVATE)
    create.click(guarded(create_study), [password, upload, path_box, preset, preset_file, name, items_per_page,
                                         per_item, per_label, seed, abandon, only_correct], outputs, **PRIVATE)
    add.click(add_annotators_event, [password, study_choice, count, base_box], outputs, **PRIVATE)
    export_button.click(guarded(export_study), [password, study_choice, fmt], outputs, **PRIVATE)
    build.click(build_quickstart_event, [password], outputs, **PRIVATE)
    return password


def _need_study(study_id: str | None) -> str:
    if not study_id:
        raise AnnotationError("choose a study first (sign in, then pick one)", field="study")
    return study_id


# ------------------------------------------------------------------------ results


def _results_tab(db_path: str, gate: admin.AdminGate, password: gr.Textbox) -> None:
    from annotation.results_ui import build_results_tab
    build_results_tab(db_path, gate.ok, password)


# ------------------------------------------------------------------------ demo

def list_runs(models_dir: Path) -> list[str]:
    """Fine-tuned run folders under models/ (a manifest and a delta); sorted by path for a stable menu."""
    from annotation.backend import list_checkpoints  # torch-free
    return sorted(list_checkpoints(models_dir))


def _demo_call(action: Callable[[Callable | None], Any], model: str, allowed: list[str], progress=None):
    """Run a demo request in the model worker process (never in this server); errors become messages."""
    if model not in allowed:
        raise gr.Error(f"unknown model {model!r}; choose one from the list")
    report = (lambda fraction, text: progress(fraction, desc=text)) if progress else None
    try:
        return action(report)
    except AnnotationError as err:
        raise gr.Error(f"{model}: {err}") from err


def _client(request: gr.Request | None) -> str:
    return (request.client.host if request and request.client else "") or "unknown"


def _banner(demo: gr.Blocks, text: Callable[[], str]) -> None:
    """A status line at the top (the quickstart build's progress), polled only while it says something."""
    line = gr.Markdown("", elem_id="sf-banner")
    timer = gr.Timer(2.0, active=False)

    def refresh():
        current = text()
        return gr.Markdown(current, visible=bool(current)), gr.Timer(active=bool(current))

    timer.tick(refresh, None, [line, timer], **PRIVATE)
    demo.load(refresh, None, [line, timer], **PRIVATE)


def _run_label(run: str, models_dir: Path) -> str:
    try:
        return f"run: {Path(run).relative_to(models_dir)}"
    except ValueError:
        return f"run: {run}"


def _field_label(name: str) -> str:
    return f"Choice {name}" if len(name) == 1 else field_title(name)


def _demo_tab(models_dir: Path, worker) -> None:
    gr.Markdown("Type an input and see the model's predicted label and explanation. The first use loads the "
                "model (about a minute for the default).")
    with gr.Row():
        runs = list_runs(models_dir)
        quickstart = next((r for r in runs if Path(r).name == "quickstart"), None)
        # the base model is not fine-tuned to explain; the quickstart run is, so it is the default when present
        model = gr.Dropdown(BUILTIN_MODELS + [(_run_label(r, models_dir), r) for r in runs],
                            value=quickstart or "default", label="Model", allow_custom_value=False)
        dataset = gr.Dropdown(DEMO_DATASETS, value="esnli", label="Task")
        load = gr.Button("Load model")
    load_status = gr.Markdown("")
    fields = [gr.Textbox(label=_field_label(name), visible=True, lines=2) for name in INPUT_FIELDS["esnli"]]
    fields += [gr.Textbox(visible=False, lines=1) for _ in range(DEMO_MAX_FIELDS - len(fields))]
    predict = gr.Button("Predict and explain", variant="primary")
    with gr.Row():
        label = gr.Textbox(label="Predicted label", interactive=False, elem_id="sf-demo-label")
        explanation = gr.Textbox(label="Explanation", interactive=False, lines=2, elem_id="sf-demo-explanation")
    with gr.Accordion("Model input and raw output", open=False):
        prompt = gr.Textbox(label="Prompt", interactive=False)
        raw = gr.Textbox(label="Raw generation", interactive=False)

    def allowed() -> list[str]:
        return BUILTIN_MODELS + list_runs(models_dir)

    def field_names(task: str) -> list[str]:
        return INPUT_FIELDS.get(task, ["input"])

    def show_fields(model_name: str, task: str):
        names = field_names(task)[:DEMO_MAX_FIELDS]
        return [gr.Textbox(label=_field_label(names[i]), visible=True) if i < len(names)
                else gr.Textbox(visible=False, value="")
                for i in range(DEMO_MAX_FIELDS)]

    def load_model(model_name: str, request: gr.Request, progress=gr.Progress()) -> str:
        """demo_load_model: load (and cache) a model in the worker process; returns a status line."""
        _demo_call(lambda report: worker.load(model_name, _client(request), report), model_name, allowed(), progress)
        return f"Loaded **{model_name}**."

    def run(model_name: str, task: str, f1: str, f2: str, f3: str, f4: str, f5: str, f6: str,
            request: gr.Request, progress=gr.Progress()):
        """demo_predict: label, explanation, prompt and raw generation for the typed inputs."""
        values = (f1, f2, f3, f4, f5, f6)  # DEMO_MAX_FIELDS, spelled out: Gradio injects `request` by position
        names = field_names(task)
        inputs = {name: (values[i] or "").strip()[:2000] for i, name in enumerate(names[:DEMO_MAX_FIELDS])}
        missing = [name for name, text in inputs.items() if not text]
        if missing:
            raise gr.Error(f"fill in: {', '.join(missing)}")
        result = _demo_call(lambda report: worker.predict(model_name, task, inputs, _client(request), report),
                            model_name, allowed(), progress)
        return result["label"], result["explanation"], result.get("prompt", ""), result.get("raw_generation", "")

    dataset.change(show_fields, [model, dataset], fields, **PRIVATE)
    load.click(load_model, model, load_status, api_name="demo_load_model") \
        .then(show_fields, [model, dataset], fields, **PRIVATE)
    predict.click(run, [model, dataset, *fields], [label, explanation, prompt, raw], api_name="demo_predict")
