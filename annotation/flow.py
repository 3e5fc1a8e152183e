"""The annotator flow as plain functions returning JSON-able "views": what one annotator may see now.

The Gradio app (and any script through gradio_client) calls these. A view never contains which
explanation is the gold one, the gold label before the gate is answered, or anything of another annotator.
Every call carries the annotator's secret token; the token alone decides whose items are reachable.
"""

from __future__ import annotations

from typing import Any

from annotation.errors import AnnotationError
from annotation.protocol import question_for
from annotation.store import GATE_FAILED, SUBMITTED, Annotator, Assignment, RatingInput, Store

FIELD_NAMES = {"sent0": "Statement 1", "sent1": "Statement 2"}
SLOTS = "AB"
ASK = object()  # AnnotatorFlow.current: "ask the store for the next assignment"
PROLIFIC_COMPLETE_URL = "https://app.prolific.com/submissions/complete?cc={code}"


def field_title(name: str) -> str:
    return FIELD_NAMES.get(name, name.replace("_", " ").strip().capitalize())


class AnnotatorFlow:
    def __init__(self, store: Store):
        self.store = store

    # ---------------------------------------------------------------- public calls
    def start(self, token: str = "", study: str = "", prolific_pid: str = "", prolific_study_id: str = "",
              session_id: str = "", key: str = "") -> dict[str, Any]:
        """Open (or resume) an annotator's session from their link parameters. Open (Prolific) entry needs
        the study's secret `key` from the full study URL."""
        try:
            if token:
                annotator = self.store.annotator_by_token(token.strip())
            elif prolific_pid:
                if not study:
                    raise AnnotationError("the link names no study; open the study from Prolific again",
                                          field="study")
                annotator = self.store.sign_in_prolific(study.strip(), prolific_pid.strip(),
                                                        prolific_study_id.strip(), session_id.strip(),
                                                        entry_key=(key or "").strip())
            else:
                return error_view("Open the personal link you were given to start rating.")
        except AnnotationError as err:
            return error_view(err.reason)
        return self.current(annotator)

    def answer_gate(self, token: str, assignment_id: int | float | str, answer: str) -> dict[str, Any]:
        try:
            annotator = self.store.annotator_by_token(token)
        except AnnotationError as err:
            return error_view(err.reason)
        try:
            assignment, following = self.store.answer_gate_and_next(annotator, _as_int(assignment_id), answer)
        except AnnotationError as err:
            return self.current(annotator, message=err.reason, error=True)
        if assignment.status == GATE_FAILED:
            return self.current(annotator, message="That was not the expected answer, so this item ends "
                                "here. Here is the next one.", following=following)
        return self.current(annotator, following=following)

    def submit(self, token: str, assignment_id: int | float | str, rating_a: str, rating_b: str = "",
               shortcomings_a: list[str] | None = None, shortcomings_b: list[str] | None = None,
               comment: str = "") -> dict[str, Any]:
        """Store the ratings of Explanation A (and B); returns the next item's view."""
        try:
            annotator = self.store.annotator_by_token(token)
        except AnnotationError as err:
            return error_view(err.reason)
        try:
            assignment = self.store.assignment(annotator, _as_int(assignment_id))
            if assignment.status == SUBMITTED:  # final: a resent or replayed submission changes nothing
                return self.current(annotator, message="This item was already saved; your first answers "
                                    "are kept.")
            given = [(rating_a, shortcomings_a), (rating_b, shortcomings_b)]
            ratings = {question: RatingInput(rating=given[i][0] or "", shortcomings=list(given[i][1] or []))
                       for i, question in enumerate(assignment.order)}
            _, following = self.store.submit_and_next(annotator, assignment.id, ratings, comment or "")
        except AnnotationError as err:
            return self.current(annotator, message=err.reason, error=True)
        return self.current(annotator, message="Saved.", following=following)

    # ---------------------------------------------------------------- views
    def current(self, annotator: Annotator, message: str = "", error: bool = False,
                following: Assignment | None | object = ASK) -> dict[str, Any]:
        """The annotator's view now; `following` is the next assignment when the caller already has it
        (chosen in the same transaction as the write), else it is asked for."""
        study = self.store.study(annotator.study_id)
        protocol = study["protocol"]
        try:
            assignment = self.store.next_assignment(annotator) if following is ASK else following
        except AnnotationError as err:
            return error_view(err.reason)
        progress = self.store.progress(annotator)
        base = {"ok": not error, "message": message, "token": annotator.token, "study": study["id"],
                "title": protocol["title"], "instructions_md": protocol["instructions_md"],
                "progress": {"done": progress.done, "total": progress.quota}}
        if assignment is None:
            return {**base, **self._done_view(annotator, study, progress)}
        base["progress"]["text"] = progress_text(
            progress, self.store.items_within_reach(annotator, limit=progress.quota - progress.done))
        return {**base, **self._item_view(assignment, protocol)}

    def _done_view(self, annotator: Annotator, study: dict, progress) -> dict[str, Any]:
        """The end screen. The code is the one the store recorded as earned (page full or pool empty, at
        least one item rated, not blocked at the gate); nothing else shows a code."""
        code = progress.completion_code
        view = {"stage": "done", "completion_code": code,
                "progress": {"done": progress.done, "total": progress.quota, "text": done_text(progress)}}
        if progress.blocked:
            view["thanks"] = ("This study has ended for you: several answers in a row did not match the "
                              "expected answer. Thank you for your time.")
        elif progress.done >= progress.quota and code:
            view["thanks"] = "Thank you! You have finished all your items."
        elif code:
            view["thanks"] = "Thank you! There are no more items for you right now."
        else:
            view["thanks"] = "There are no items for you right now. Please come back later."
        if annotator.source == "prolific" and code:
            view["completion_url"] = PROLIFIC_COMPLETE_URL.format(code=code)
        return view

    def _item_view(self, assignment: Assignment, protocol: dict) -> dict[str, Any]:
        item = self.store.item(assignment.item_id)
        record = item["record"]
        dataset = item["dataset"]
        view: dict[str, Any] = {
            "assignment_id": assignment.id, "dataset": dataset,
            "inputs": [{"name": field_title(k), "text": v} for k, v in record["inputs"].items()],
        }
        gate = protocol["resolved"]["gate_questions"].get(dataset) if protocol["gate"]["enabled"] else None
        if gate and assignment.gate_answer is None:
            options = gate.get("options_by_record", {}).get(record["id"], gate["options"])
            view.update(stage="gate", gate={"question": gate["question"], "context": gate.get("context", ""),
                                            "options": options,
                                            "option_text": {o: gate.get("option_text", {}).get(o, o)
                                                            for o in options}})
            return view
        shown = (gate or protocol["resolved"]["gate_questions"].get(dataset, {})).get("option_text", {})
        texts = {"model": (record["pred_explanation"], record["pred_label"]),
                 "gold": (record["gold_explanations"][0], record["gold_label"])}
        answers = {texts[q][1] for q in assignment.order}
        explanations = []
        for position, question in enumerate(assignment.order):
            text, label = texts[question]
            entry = {"slot": SLOTS[position], "text": text}
            if len(answers) > 1:  # only when the model's label differs (studies that include wrong ones)
                entry.update(answer=label, answer_text=shown.get(label, label))
            explanations.append(entry)
        view.update(stage="rate", question=question_for(protocol, dataset), explanations=explanations,
                    answer=next(iter(answers)) if len(answers) == 1 else "",
                    answer_text=shown.get(next(iter(answers)), next(iter(answers))) if len(answers) == 1 else "",
                    gate_answer=assignment.gate_answer or "",
                    scale=[{"value": p["value"], "label": p["label"], "key": p.get("key", "")}
                           for p in protocol["scale"]],
                    shortcomings=[{"value": s["value"], "label": s["label"]} for s in protocol["shortcomings"]],
                    comment=bool(protocol["comment"]))
        return view


def progress_text(progress, within_reach: int) -> str:
    """"Item n of N": N is what this annotator can really get (their page, or fewer if the study has fewer
    items left for them); items ended by a wrong gate answer are named apart, not counted as rated."""
    total = max(min(progress.quota, progress.done + within_reach), progress.done + 1)
    text = f"Item {progress.done + 1} of {total}"
    return text + (f" ({progress.gate_failed} ended at the question)" if progress.gate_failed else "")


def done_text(progress) -> str:
    text = f"{progress.submitted} rated"
    return text + (f", {progress.gate_failed} ended at the question" if progress.gate_failed else "")


def error_view(message: str) -> dict[str, Any]:
    return {"ok": False, "stage": "error", "message": message}


def _as_int(value: int | float | str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise AnnotationError("missing or bad item number; reload the page", field="assignment_id") from err
    if not 0 <= number < 2**63:  # SQLite's integers: anything else is no assignment (and would not bind)
        raise AnnotationError("missing or bad item number; reload the page", field="assignment_id")
    return number
