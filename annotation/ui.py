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
import pandas as pd

from annotation import admin
from annotation.errors import AnnotationError
from annotation.flow import AnnotatorFlow, field_title
from annotation.protocol import list_presets
from annotation.store import STUDY_CLOSED, Store, StudySettings
from annotation.backend import INPUT_FIELDS

CUSTOM_PRESET = "custom (upload a preset file)"
DEMO_DATASETS = ["esnli", "comve", "ecqa", "sbic", "sample-nli"]
DEMO_MAX_FIELDS = 6
BUILTIN_MODELS = ["default", "tiny-t5", "tiny-causal"]
PRIVATE = {"api_visibility": "private"}
FAST = {**PRIVATE, "queue": False}  # annotator events: no queue round trip (see _annotate_tab)
REDIRECT_SECONDS = 5  # Prolific participants are sent back automatically after this long

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
#sf-gate-msg .sf-msg, #sf-submit-msg .sf-msg, #sf-rating-a-msg .sf-msg, #sf-rating-b-msg .sf-msg,
[id^=sf-admin-][id$=-msg] .sf-msg {margin: .3rem 0;}
.sf-overview {display: grid; gap: .35rem; padding: .6rem .8rem; border: 1px solid var(--border-color-primary);
  border-radius: 6px;}
.sf-bar {display: grid; grid-template-columns: 11rem 1fr auto; gap: .6rem; align-items: center;}
.sf-bar progress {width: 100%; height: .9rem; accent-color: var(--color-accent);}
.sf-badge {display: inline-block; padding: 0 .5rem; border-radius: 999px; font-size: .8rem; font-weight: 600;
  text-transform: uppercase;}
.sf-badge.sf-open {background: #e3f6e8; color: #1d6b34;}
.sf-badge.sf-closed {background: #fdf1dc; color: #7a4b00;}
.sf-badge.sf-archived {background: #ececec; color: #444;}
.sf-keys {font-size: .85rem; opacity: .75; margin-top: .4rem;}
/* keyboard hints (key numbers after each option, "(Enter)" on buttons) only where there is a keyboard */
@media (min-width: 641px) and (hover: hover) {
  #sf-gate .wrap, #sf-rating-a .wrap, #sf-rating-b .wrap {counter-reset: sf-key;}
  #sf-gate label, #sf-rating-a label, #sf-rating-b label {counter-increment: sf-key;}
  #sf-gate label > span:last-child::after, #sf-rating-a label > span:last-child::after,
  #sf-rating-b label > span:last-child::after {content: "  (" counter(sf-key) ")"; opacity: .6;}
  #sf-gate-continue::after, #sf-submit::after {content: "\\00a0 (Enter)"; opacity: .8;}
}
@media (max-width: 640px), (hover: none) {
  .sf-keys {display: none;}
  .sf-bar {grid-template-columns: 1fr; gap: .1rem;}
}
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

  // Drafts: ratings picked for an item survive a reload (localStorage, keyed by the assignment id);
  // the server only ever stores submitted ratings.
  const groups = ['sf-rating-a', 'sf-rating-b', 'sf-short-a', 'sf-short-b'];
  const currentId = () => { const el = document.getElementById('sf-assignment-id'); return el ? el.dataset.id : ''; };
  const inputsOf = (id) => { const g = document.getElementById(id); return g ? [...g.querySelectorAll('input')] : []; };
  document.addEventListener('change', (event) => {
    const id = currentId();
    if (!id || !event.target.closest || !event.target.closest(groups.map((g) => '#' + g).join(','))) return;
    const draft = {};
    for (const g of groups) draft[g] = inputsOf(g).map((input, i) => input.checked ? i : -1).filter((i) => i >= 0);
    try { localStorage.setItem('sf-draft-' + id, JSON.stringify(draft)); } catch (e) { /* private mode */ }
  }, true);
  let shownId = null, restoredId = null;
  const watch = () => {
    const id = currentId();
    if (id !== shownId) {  // a new item (or the end): forget the previous draft, show the item's top
      if (shownId) { try { localStorage.removeItem('sf-draft-' + shownId); } catch (e) {} }
      if (shownId !== null && id) {
        const top = document.getElementById('sf-progress');
        if (top) top.scrollIntoView({block: 'start'});
      }
      shownId = id;
    }
    if (id && restoredId !== id && visible(document.getElementById('sf-rating-a')) && inputsOf('sf-rating-a').length) {
      restoredId = id;
      let draft = null;
      try { draft = JSON.parse(localStorage.getItem('sf-draft-' + id) || 'null'); } catch (e) {}
      if (draft) {
        for (const g of groups) {
          const inputs = inputsOf(g);
          for (const i of draft[g] || []) if (inputs[i] && !inputs[i].checked) inputs[i].click();
        }
      }
    }
    const link = document.getElementById('sf-completion-link');  // Prolific: go back automatically
    if (visible(link) && !link.dataset.scheduled) {
      link.dataset.scheduled = '1';
      let left = Number(link.dataset.redirect || 5);
      const note = document.getElementById('sf-redirect-note');
      const tick = setInterval(() => {
        left -= 1;
        if (note) note.textContent = '(taking you there in ' + Math.max(left, 0) + ' seconds)';
        if (left <= 0) { clearInterval(tick); window.location.href = link.href; }
      }, 1000);
    }
  };
  setInterval(watch, 400);
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
    """What `demo.launch` needs besides host/port (Gradio 6 takes css/js there). No run history: Gradio 6
    would keep every call's inputs in the browser (the admin password, annotator tokens), readable at
    /gradio_api/runs by the next person on a shared computer."""
    return {"css": CSS, "js": KEYBOARD_JS, "theme": gr.themes.Soft(),
            "run_history": False}  # max_file_size: annotation.server.serve


def build_app(db_path: str | Path, admin_password: str | None = None, *, models_dir: str | Path | None = None,
              quickstart_predictions: str | Path | None = None, base_url: str = "",
              with_demo: bool = True, banner: Callable[[], str] | None = None,
              demo_placement: dict[str, str] | None = None) -> gr.Blocks:
    """The whole app. `models_dir` defaults to the backend's ($SPARSEFIT_MODELS_DIR or models/).

    `admin_password` replaces the admin secret stored (hashed) in the database; None keeps the stored one
    (app.py calls `admin.ensure_admin_secret` first to generate and print one for a new database).
    `with_demo=False` leaves out the Demo tab and its endpoints; `banner` (e.g. the quickstart build's
    progress) is shown at the top and refreshed while it has something to say. `demo_placement`
    ({"device": ..., "dtype": ...}) is where the Demo's model process runs it (default: auto, float32)."""
    models_dir = Path(models_dir) if models_dir else admin.default_models_dir()
    quickstart_predictions = Path(quickstart_predictions or admin.quickstart_predictions())
    store = Store(db_path)
    flow = AnnotatorFlow(store)
    generated = admin.ensure_admin_secret(store, admin_password)
    if generated:  # only when the caller skipped ensure_admin_secret on a new database
        print(f"Admin password (generated once, stored hashed in {store.path}): {generated}", flush=True)
    gate = admin.AdminGate(store)
    # uploads and exports in Gradio's cache are deleted after a day (a study keeps its records in the database)
    with gr.Blocks(title="SparseFit: explanations", delete_cache=(3600, 86400)) as demo:
        if banner is not None:
            _banner(demo, banner)
        with gr.Tabs(selected="demo" if with_demo else "annotate") as tabs:
            if with_demo:
                with gr.Tab("Demo", id="demo"):
                    from annotation.workers import DemoWorker
                    demo_menu = _demo_tab(Path(models_dir), DemoWorker(**(demo_placement or {})))
            with gr.Tab("Annotate", id="annotate"):
                annotate = _annotate_tab(flow)
            with gr.Tab("Admin", id="admin"):
                password_box = _admin_tab(store, gate, Path(quickstart_predictions), base_url)
            with gr.Tab("Results", id="results"):
                _results_tab(str(db_path), gate, password_box)
        annotator_style = gr.HTML("", padding=False)
        if with_demo:
            demo.load(demo_menu[0], None, demo_menu[1], **PRIVATE)
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
    # and Gradio's footer ("Use via API", "Built with Gradio") is no business of theirs
    style = "<style>.tab-wrapper, footer {display: none !important;}</style>" if is_annotator else ""
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
            gate_button = gr.Button("Continue", variant="primary", elem_id="sf-gate-continue")
            gate_note = note("sf-gate-msg")
        with gr.Column(visible=False) as rate_box:
            answer = gr.HTML("", elem_id="sf-answer")
            question = gr.HTML("")
            with gr.Row(equal_height=False):
                with gr.Column(elem_id="sf-block-a"):
                    expl_a = gr.HTML("", elem_id="sf-expl-a")
                    rating_a = gr.Radio([], label="Rating for Explanation A", elem_id="sf-rating-a")
                    note_a = note("sf-rating-a-msg")
                    short_a = gr.CheckboxGroup([], label="Shortcomings of Explanation A", visible=False,
                                               elem_id="sf-short-a")
                with gr.Column(elem_id="sf-block-b") as block_b:
                    expl_b = gr.HTML("", elem_id="sf-expl-b")
                    rating_b = gr.Radio([], label="Rating for Explanation B", elem_id="sf-rating-b")
                    note_b = note("sf-rating-b-msg")
                    short_b = gr.CheckboxGroup([], label="Shortcomings of Explanation B", visible=False,
                                               elem_id="sf-short-b")
            comment = gr.Textbox(label="Comment (optional)", lines=2, max_lines=6, visible=False)
            submit_note = note("sf-submit-msg")  # a refused submit says why right above the button
            submit = gr.Button("Submit", variant="primary", elem_id="sf-submit")
    keys_help = gr.HTML("<div class='sf-keys'>Keyboard: <b>1</b>–<b>9</b> choose an option (the first unrated "
                        "explanation, or the one you clicked), <b>Enter</b> continues / submits.</div>",
                        padding=False)
    done = gr.HTML("", visible=False, elem_id="sf-done")

    screen = [token, assignment, title, progress, message, instructions_box, instructions, entry, item_box,
              inputs, gate_box, gate_question, gate_radio, rate_box, answer, question, expl_a, rating_a, short_a,
              block_b, expl_b, rating_b, short_b, comment, done, gate_note, note_a, note_b, submit_note]

    def render(current: dict | None, previous_assignment: str):
        return _render(current or {}, previous_assignment, dict(zip(
            ["token", "assignment", "title", "progress", "message", "instructions_box", "instructions",
             "entry", "item_box", "inputs", "gate_box", "gate_question", "gate_radio", "rate_box", "answer",
             "question", "expl_a", "rating_a", "short_a", "block_b", "expl_b", "rating_b", "short_b", "comment",
             "done", "gate_note", "note_a", "note_b", "submit_note"], screen)))

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
    """Turn a view into screen updates. A refused answer of the same item keeps the choices and puts its
    message next to the control that caused it (the gate's Continue, or the rating and the Submit button)."""
    stage = view.get("stage", "error")
    is_error = not view.get("ok", False)
    text = view.get("message", "")
    same_item = str(view.get("assignment_id", "")) == str(previous_assignment or "")
    notes = {c[name]: "" for name in ("gate_note", "note_a", "note_b", "submit_note")}
    if is_error and stage in ("gate", "rate") and same_item:
        text = text[:1].upper() + text[1:]
        if stage == "gate":
            return {**notes, c["gate_note"]: message_html(text, True)}
        for slot in "ab":  # "choose a rating for Explanation B" also marks B's rating
            if f"explanation {slot}" in text.lower():
                notes[c[f"note_{slot}"]] = message_html(text, True)
        return {**notes, c["submit_note"]: message_html(text, True), c["message"]: gr.HTML(visible=False)}
    updates: dict = {**notes, c["message"]: gr.HTML(message_html(text, is_error), visible=bool(text))}
    progress = view.get("progress", {})
    updates.update({
        c["token"]: view.get("token", gr.skip()) if view.get("token") else gr.skip(),
        c["assignment"]: str(view.get("assignment_id", "")),
        c["title"]: f"### {esc(view.get('title', 'Rate explanations'))}",
        c["progress"]: esc(progress.get("text", "")),
        c["instructions_box"]: gr.Accordion(visible=stage != "error" or bool(view.get("instructions_md")),
                                            open=progress.get("done", 0) == 0),
        c["instructions"]: without_keyboard_help(view.get("instructions_md", "")),
        c["entry"]: gr.Column(visible=stage == "error" and not view.get("token") and text != STUDY_CLOSED),
        c["item_box"]: gr.Column(visible=stage in ("gate", "rate")),
        c["gate_box"]: gr.Column(visible=stage == "gate"),
        c["rate_box"]: gr.Column(visible=stage == "rate"),
        c["done"]: gr.HTML(_done_html(view), visible=stage == "done"),
    })
    if stage in ("gate", "rate"):
        updates[c["inputs"]] = (fields_html(view.get("inputs", [])) +  # the draft script keys on this id
                                f"<span hidden id='sf-assignment-id' data-id='{esc(view.get('assignment_id', ''))}'>"
                                "</span>")
    if stage == "gate":
        gate = view["gate"]
        choices = [(gate["option_text"].get(o, o), o) for o in gate["options"]]  # key numbers come from CSS
        updates.update({c["gate_question"]: f"<div class='sf-answer'><b>{esc(gate['question'])}</b></div>",
                        c["gate_radio"]: gr.Radio(choices=choices, value=None)})
    if stage == "rate":
        updates.update(_rate_updates(view, c))
    return updates


def without_keyboard_help(markdown: str) -> str:
    """The preset's "**Keyboard:** ..." paragraph goes: the page shows its own, at desktop width only."""
    return "\n\n".join(part for part in markdown.split("\n\n") if not part.lstrip().startswith("**Keyboard"))


def _rate_updates(view: dict, c: dict[str, Any]) -> dict:
    explanations = view["explanations"]
    scale = [(p["label"], p["value"]) for p in view["scale"]]  # key numbers come from CSS (desktop only)
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
    if view.get("completion_url"):  # the page script follows this link after REDIRECT_SECONDS
        parts.append(f"<p><a id='sf-completion-link' data-redirect='{REDIRECT_SECONDS}' "
                     f"href='{esc(view['completion_url'])}'>Return to Prolific to finish</a> "
                     f"<span id='sf-redirect-note'>(taking you there in {REDIRECT_SECONDS} seconds)</span></p>")
    return "".join(parts)


# ------------------------------------------------------------------------ admin


def _base_url(request: gr.Request | None, configured: str) -> str:
    if configured.strip():
        return configured.strip().rstrip("/")
    headers = request.headers if request else {}
    host = headers.get("x-forwarded-host") or headers.get("host") or "localhost:7860"
    scheme = headers.get("x-forwarded-proto") or "http"
    return f"{scheme}://{host}"


def error_text(err: AnnotationError) -> str:
    """What a person reads: the reason, plus file and line when the problem sits in a file."""
    return str(err) if err.path else err.reason[:1].upper() + err.reason[1:]


def note(elem_id: str) -> gr.HTML:
    """A message box placed right under the control whose event writes to it."""
    return gr.HTML("", elem_id=elem_id, padding=False)


def overview_html(study: dict[str, Any], progress: dict[str, Any]) -> str:
    """The chosen study at a glance: status, settings and two progress bars."""
    def bar(label: str, done: int, total: int) -> str:
        share = f"{done / total:.0%}" if total else "-"
        return (f"<div class='sf-bar'><span>{esc(label)}</span><progress value='{done}' max='{max(total, 1)}'>"
                f"</progress><span>{done} / {total} ({share})</span></div>")
    status = study.get("status") or "open"
    return (f"<div class='sf-overview'><div><span class='sf-badge sf-{esc(status)}'>{esc(status)}</span> "
            f"<b>{esc(study['name'])}</b>"
            + (f" <code>{esc(study['id'])}</code>" if study["id"] != study["name"] else "")
            + f" · preset {esc(study['preset'])} · "
            f"{study['items_per_page']} items per annotator · {study['annotators_per_item']} annotators per "
            f"item · created {esc(study['created_at'][:16].replace('T', ' '))} UTC</div>"
            + bar("Items complete", progress["items_complete"], progress["items"])
            + bar("Annotations submitted", progress["annotations_submitted"], progress["annotations_needed"])
            + f"<div>{_count(progress['annotators'], 'annotator')} · "
              f"{_count(progress['ratings'], 'explanation rating')} · Prolific sign-ups "
              f"{progress['prolific_signups']} / {progress['max_signups'] or 'no cap'}</div></div>")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _admin_tab(store: Store, gate: admin.AdminGate, quickstart_predictions: Path, base_url: str) -> gr.Textbox:
    with gr.Row(equal_height=True):
        password = gr.Textbox(label="Admin password", type="password", scale=3, elem_id="sf-admin-password",
                              placeholder="printed once at the first start; change it here once signed in")
        sign_in = gr.Button("Sign in", scale=1, variant="primary", elem_id="sf-admin-sign-in")
    sign_in_note = note("sf-admin-sign-in-msg")
    with gr.Column(visible=False, elem_id="sf-admin-area") as area:
        with gr.Row(equal_height=True):
            study_choice = gr.Dropdown([], label="Study", interactive=True, scale=3, elem_id="sf-admin-study")
            refresh_button = gr.Button("Refresh", scale=1, elem_id="sf-admin-refresh")
        overview = gr.HTML("", elem_id="sf-admin-overview")
        with gr.Accordion("Progress per annotator", open=True, elem_id="sf-admin-progress-panel"):
            per_annotator = gr.Dataframe(pd.DataFrame(columns=admin.ANNOTATOR_COLUMNS), interactive=False,
                                         elem_id="sf-admin-annotators")
        with gr.Accordion("Create a study", open=False, elem_id="sf-admin-create-panel"):
            with gr.Row():
                upload = gr.File(label="Predictions file (.jsonl)", file_types=[".jsonl"], type="filepath")
                path_box = gr.Textbox(label="…or its path on the server", elem_id="sf-admin-path",
                                      placeholder="models/runs/x/predictions.jsonl")
            with gr.Row():
                preset = gr.Dropdown(list_presets() + [CUSTOM_PRESET], value="feb", label="Protocol preset")
                preset_file = gr.File(label="Custom preset (.json)", file_types=[".json"], type="filepath")
            with gr.Row():
                items_per_page = gr.Number(10, label="Items per annotator", precision=0, minimum=1)
                per_item = gr.Number(3, label="Annotators per item", precision=0, minimum=1)
                per_label = gr.Number(2, label="Items per label (0 = all)", precision=0, minimum=0)
                seed = gr.Number(0, label="Seed", precision=0)
                abandon = gr.Number(30, label="Abandon after (minutes)", precision=0, minimum=1)
                signups = gr.Textbox(label="Max Prolific sign-ups", placeholder="2 × needed (0: no cap)",
                                     max_lines=1, elem_id="sf-admin-max-signups")
            only_correct = gr.Checkbox(True, label="Only correctly predicted items")
            name = gr.Textbox(label="Study name (optional; must be new)", elem_id="sf-admin-name", max_lines=1)
            create = gr.Button("Create study", variant="primary", elem_id="sf-admin-create")
            create_note = note("sf-admin-create-msg")
        with gr.Accordion("Annotator links", open=False, elem_id="sf-admin-links-panel"):
            with gr.Row(equal_height=True):
                count = gr.Number(3, label="How many new annotators", precision=0, minimum=1)
                base_box = gr.Textbox(value=base_url, label="Base URL (empty = this server)")
            add = gr.Button("Add annotators", elem_id="sf-admin-add")
            add_note = note("sf-admin-add-msg")
            links = gr.Textbox(label="Links (one per annotator; send each person their own)", lines=4,
                               interactive=False, buttons=["copy"], elem_id="sf-admin-links")
            prolific = gr.Textbox(label="Prolific study URL (Prolific fills in the placeholders)",
                                  interactive=False, buttons=["copy"], elem_id="sf-admin-prolific")
        with gr.Accordion("Export", open=False, elem_id="sf-admin-export-panel"):
            fmt = gr.Radio(["csv", "jsonl", "parquet"], value="csv", label="Format")
            export_button = gr.Button("Export", elem_id="sf-admin-export")
            export_note = note("sf-admin-export-msg")
            export_file = gr.File(label="Download", interactive=False)
        with gr.Accordion("Study status: close, reopen, archive, delete", open=False,
                          elem_id="sf-admin-lifecycle-panel"):
            gr.Markdown("A **closed** study gives annotators no new items (those who finished still see "
                        "their code). **Archived** = closed and listed last. A study can be **deleted** only "
                        "while it has no ratings.")
            with gr.Row():
                close_button = gr.Button("Close", elem_id="sf-admin-close")
                reopen_button = gr.Button("Reopen", elem_id="sf-admin-reopen")
                archive_button = gr.Button("Archive", elem_id="sf-admin-archive")
            confirm = gr.Textbox(label="To delete, type the study id", max_lines=1, elem_id="sf-admin-confirm")
            delete_button = gr.Button("Delete study", variant="stop", elem_id="sf-admin-delete")
            lifecycle_note = note("sf-admin-lifecycle-msg")
        with gr.Accordion("Admin password", open=False, elem_id="sf-admin-password-panel"):
            with gr.Row():
                new_password = gr.Textbox(label="New password", type="password", elem_id="sf-admin-new")
                repeat_password = gr.Textbox(label="New password again", type="password",
                                             elem_id="sf-admin-repeat")
            change_button = gr.Button("Change password", elem_id="sf-admin-change")
            password_note = note("sf-admin-change-msg")
        with gr.Accordion("Quickstart study", open=False, elem_id="sf-admin-quickstart-panel"):
            gr.Markdown("Build the quickstart predictions with the default model (takes minutes) and create "
                        "the demo study from them.")
            build = gr.Button("Build quickstart predictions", elem_id="sf-admin-build")
            build_note = note("sf-admin-build-msg")

    def refresh(study_id: str | None) -> dict:
        studies = admin.study_rows(store)
        studies.sort(key=lambda s: s["status"] == "archived")  # archived ones last, else by creation
        ids = [s["id"] for s in studies]
        chosen = study_id if study_id in ids else next((s["id"] for s in reversed(studies)
                                                        if s["status"] != "archived"), ids[-1] if ids else None)
        updates = {area: gr.Column(visible=True),
                   study_choice: gr.Dropdown(choices=[(f"{s['id']} · {s['status']} · {s['items']} items · "
                                                       f"{s['ratings']} ratings", s["id"]) for s in studies],
                                             value=chosen),
                   overview: ("<div class='sf-overview'>No studies yet: create one below.</div>" if chosen is None
                              else overview_html(store.study(chosen), store.study_progress(chosen))),
                   per_annotator: pd.DataFrame(admin.progress_rows(store, chosen)[1] if chosen else [],
                                               columns=admin.ANNOTATOR_COLUMNS)}
        return updates

    def event(action: Callable, box: gr.HTML) -> Callable:
        """An admin event: check the password (with lock-out), run, and put any error under its control."""
        def run(request: gr.Request, secret: str, *args):
            try:
                gate.require(secret, _client(request))
                return action(request, *args)
            except AnnotationError as err:
                return {box: message_html(error_text(err), error=True)}
        return run

    def signed_in(request, study_id):
        return {**refresh(study_id), sign_in_note: message_html(f"Signed in. Database: {store.path}")}

    def create_study(request, uploaded, typed_path, preset_name, preset_upload, study_name, page, per, label_n,
                     seed_n, minutes, signup_cap, correct_only):
        source = uploaded or (typed_path or "").strip()
        if not source:
            raise AnnotationError("upload a predictions file or give its path on the server", field="predictions")
        chosen_preset = preset_name
        if preset_name == CUSTOM_PRESET:
            if not preset_upload:
                raise AnnotationError("upload the custom preset file (.json)", field="preset")
            chosen_preset = preset_upload
        admin.check_new_study_name(store, study_name)
        study_id = store.create_study(source, StudySettings(
            preset=chosen_preset, items_per_page=int(page or 0), annotators_per_item=int(per or 0),
            only_correct=bool(correct_only), per_label=int(label_n or 0), seed=int(seed_n or 0),
            name=(study_name or "").strip() or None, abandon_minutes=int(minutes or 0),
            max_signups=_signup_cap(signup_cap)))
        cap = store.study(study_id)["max_signups"]
        return {**refresh(study_id), create_note: message_html(
            f"Created study {study_id} with {store.study_progress(study_id)['items']} items"
            + (f"; Prolific sign-ups capped at {cap}" if cap else "; no cap on Prolific sign-ups")
            + ". Add annotators under “Annotator links”.")}

    def add_annotators(request, study_id, how_many, base):
        made = store.add_annotators(_need_study(study_id), int(how_many or 0))
        root = _base_url(request, base or "")
        return {**refresh(study_id), links: "\n".join(admin.annotator_link(root, a.token) for a in made),
                prolific: admin.prolific_link(root, study_id, store.study(study_id)["entry_key"]),
                add_note: message_html(f"Added {len(made)} annotators to {study_id}.")}

    def export_study(request, study_id, chosen_format):
        out = Path(tempfile.mkdtemp(prefix="sparsefit-export-")) / f"{_need_study(study_id)}.{chosen_format}"
        path = admin.export(store.path, study_id, chosen_format, out)
        return {export_file: str(path), export_note: message_html(f"Exported {study_id} as {chosen_format}.")}

    def set_status(status: str, verb: str) -> Callable:
        def action(request, study_id):
            store.set_study_status(_need_study(study_id), status)
            return {**refresh(study_id), lifecycle_note: message_html(f"Study {study_id} {verb}.")}
        return action

    def delete_study(request, study_id, typed):
        study_id = _need_study(study_id)
        if (typed or "").strip() != study_id:
            raise AnnotationError(f"type the study id ({study_id}) in the box above to confirm", field="confirm")
        store.delete_study(study_id)
        return {**refresh(None), confirm: "", lifecycle_note: message_html(f"Deleted study {study_id}.")}

    def change_password(request, current, new, repeated):
        gate.change(current, new, repeated, _client(request))
        return {password: "", new_password: "", repeat_password: "",
                password_note: message_html("Password changed: sign in with the new one from now on.")}

    def build_quickstart_event(request: gr.Request, secret: str, progress=gr.Progress()):
        try:
            gate.require(secret, _client(request))
            study_id = admin.build_quickstart(store, progress=lambda fraction, text: progress(fraction, desc=text))
        except AnnotationError as err:
            return {build_note: message_html(error_text(err), error=True)}
        return {**refresh(study_id), build_note: message_html(f"Quickstart study {study_id} is ready.")}

    outputs = {area, study_choice, overview, per_annotator, links, prolific, export_file, confirm, password,
               new_password, repeat_password, sign_in_note, create_note, add_note, export_note, lifecycle_note,
               password_note, build_note}
    sign_in.click(event(signed_in, sign_in_note), [password, study_choice], outputs, **PRIVATE)
    password.submit(event(signed_in, sign_in_note), [password, study_choice], outputs, **PRIVATE)
    refresh_button.click(event(lambda request, study_id: refresh(study_id), sign_in_note),
                         [password, study_choice], outputs, **PRIVATE)
    study_choice.input(event(lambda request, study_id: refresh(study_id), sign_in_note),
                       [password, study_choice], outputs, **PRIVATE)
    create.click(event(create_study, create_note), [password, upload, path_box, preset, preset_file, name,
                                                    items_per_page, per_item, per_label, seed, abandon,
                                                    signups, only_correct], outputs, **PRIVATE)
    add.click(event(add_annotators, add_note), [password, study_choice, count, base_box], outputs, **PRIVATE)
    export_button.click(event(export_study, export_note), [password, study_choice, fmt], outputs, **PRIVATE)
    for button, status, verb in ((close_button, "closed", "closed: annotators get no new items"),
                                 (reopen_button, "open", "reopened"),
                                 (archive_button, "archived", "archived")):
        button.click(event(set_status(status, verb), lifecycle_note), [password, study_choice], outputs, **PRIVATE)
    delete_button.click(event(delete_study, lifecycle_note), [password, study_choice, confirm], outputs, **PRIVATE)
    change_button.click(event(change_password, password_note), [password, password, new_password,
                                                                repeat_password], outputs, **PRIVATE)
    build.click(build_quickstart_event, [password], outputs, **PRIVATE)
    return password


def _need_study(study_id: str | None) -> str:
    if not study_id:
        raise AnnotationError("choose a study first (the Study menu at the top)", field="study")
    return study_id


# ------------------------------------------------------------------------ results


def _results_tab(db_path: str, gate: admin.AdminGate, password: gr.Textbox) -> None:
    from annotation.results_ui import build_results_tab
    build_results_tab(db_path, gate.ok, password,
                      require_admin=lambda secret, request: gate.require(secret, _client(request)))


# ------------------------------------------------------------------------ demo

def list_runs(models_dir: Path) -> list[str]:
    """Fine-tuned run folders under models/ (a manifest and a delta); sorted by path for a stable menu."""
    from annotation.backend import list_checkpoints  # torch-free
    return sorted(list_checkpoints(models_dir))


def _demo_call(action: Callable[[Callable | None], Any], model: str, allowed: list[str], models_dir: Path,
               progress=None):
    """Run a demo request in the model worker process (never in this server); errors become messages that
    name runs by their place under models/, not by the server's absolute path."""
    if model not in allowed:
        raise gr.Error(f"unknown model {model!r}; choose one from the list")
    report = (lambda fraction, text: progress(fraction, desc=text)) if progress else None
    try:
        return action(report)
    except AnnotationError as err:
        text = str(err)
        for root in {str(models_dir), str(Path(models_dir).resolve())}:
            text = text.replace(root.rstrip("/") + "/", "")
        raise gr.Error(f"{model}: {text}") from err


def _signup_cap(text: str | None) -> int | None:
    """The Admin form's cap on Prolific sign-ups: empty = the default (twice the annotators needed)."""
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise AnnotationError(f"write a whole number (0 = no cap) or leave it empty, not {text!r}",
                              field="max_signups")
    return int(text)


def _client(request: gr.Request | None) -> str:
    """The address that admin lock-outs and demo rate limits count against: the socket peer as uvicorn
    reports it. uvicorn replaces it by the X-Forwarded-For client only when the peer is a trusted proxy
    (FORWARDED_ALLOW_IPS, default 127.0.0.1 and ::1), so a header sent from anywhere else changes nothing;
    reading the header here would let a participant start a fresh lock-out count with each made-up address."""
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


def _run_name(run: str, models_dir: Path) -> str:
    try:
        return Path(run).relative_to(models_dir).as_posix()
    except ValueError:
        return Path(run).name


def _field_label(name: str) -> str:
    return f"Choice {name}" if len(name) == 1 else field_title(name)


def base_model_hint(model_name: str | None) -> str:
    """Base models were never taught to answer `<label> because <explanation>`: say so before anyone tries."""
    if model_name not in BUILTIN_MODELS:
        return ""
    return (f"⚠️ **{model_name} is a base model, not fine-tuned:** expect an empty label or “UNK” and a "
            "loose explanation. Pick a run from `models/runs` in the menu, or build the quickstart run "
            "(Admin → Quickstart study, or `python app.py --build-quickstart`).")


def _demo_tab(models_dir: Path, worker) -> tuple[Callable, list]:
    gr.Markdown("Type an input and see the model's predicted label and explanation. The first use loads the "
                "model (about a minute for the default).")
    def run_paths() -> dict[str, str]:
        """Menu value -> run folder. Values are paths under models/ ("runs/quickstart"), so the page and the
        API never show where the server keeps its files."""
        return {_run_name(path, models_dir): path for path in list_runs(models_dir)}

    def model_menu() -> tuple[list, str]:
        names = list(run_paths())
        quickstart = next((n for n in names if Path(n).name == "quickstart"), None)
        # the base model is not fine-tuned to explain; the quickstart run is, so it is the default when present
        return BUILTIN_MODELS + [(f"run: {name}", name) for name in names], quickstart or "default"

    with gr.Row():
        choices, chosen = model_menu()
        # custom values: runs written after start (API callers) pass; _demo_call checks every value anyway
        model = gr.Dropdown(choices, value=chosen, label="Model", allow_custom_value=True)
        dataset = gr.Dropdown(DEMO_DATASETS, value="esnli", label="Task")
        load = gr.Button("Load model")
    base_hint = gr.Markdown(base_model_hint(model.value), elem_id="sf-demo-hint")
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

    def allowed_and_path(model_name: str) -> tuple[list[str], str]:
        """The names a request may use and the folder (or built-in name) this one names: one scan of models/."""
        paths = run_paths()
        return BUILTIN_MODELS + list(paths), paths.get(model_name, model_name)

    def field_names(task: str) -> list[str]:
        return INPUT_FIELDS.get(task, ["input"])

    def show_fields(model_name: str, task: str):
        names = field_names(task)[:DEMO_MAX_FIELDS]
        return [gr.Textbox(label=_field_label(names[i]), visible=True) if i < len(names)
                else gr.Textbox(visible=False, value="")
                for i in range(DEMO_MAX_FIELDS)]

    def load_model(model_name: str, request: gr.Request, progress=gr.Progress()) -> str:
        """demo_load_model: load (and cache) a model in the worker process; returns a status line."""
        allowed, path = allowed_and_path(model_name)
        _demo_call(lambda report: worker.load(path, _client(request), report), model_name, allowed, models_dir,
                   progress)
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
        allowed, path = allowed_and_path(model_name)
        result = _demo_call(lambda report: worker.predict(path, task, inputs, _client(request), report),
                            model_name, allowed, models_dir, progress)
        return result["label"], result["explanation"], result.get("prompt", ""), result.get("raw_generation", "")

    def refresh_menu():
        """Runs written after the app started (e.g. the quickstart built in the background) appear on reload."""
        choices, chosen = model_menu()
        return gr.Dropdown(choices=choices, value=chosen), base_model_hint(chosen)

    dataset.change(show_fields, [model, dataset], fields, **PRIVATE)
    model.change(base_model_hint, model, base_hint, **PRIVATE)
    load.click(load_model, model, load_status, api_name="demo_load_model") \
        .then(show_fields, [model, dataset], fields, **PRIVATE)
    predict.click(run, [model, dataset, *fields], [label, explanation, prompt, raw], api_name="demo_predict")
    return refresh_menu, [model, base_hint]
