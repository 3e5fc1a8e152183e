"""Examples → model text and back: FEB input/target formats, the decoder-only variant, parsing, scoring.

Formats (REFERENCE §2; whitespace collapsed to single spaces; ``\\n`` is the two characters backslash
and n, the UnifiedQA convention, and UnifiedQA inputs end with the literal text ``</s>``):

| dataset | input | target |
|---|---|---|
| esnli, sample-nli | ``explain nli hypothesis: {hypothesis} premise: {premise}`` | ``{label} because {explanation}`` |
| ecqa | ``explain {question} \\n (A) {A} (B) {B} (C) {C} (D) {D} (E) {E}</s>`` | ``{answer} because {explanation}`` |
| comve | ``explain what is more nonsensical? \\n choice1: {sent0} choice2: {sent1}</s>`` | ``choice{1|2} because {explanation}`` |
| sbic | ``explain what is this? \\n post: {post}</s>`` | ``{offensive|not_offensive} because {explanation}`` |
| user task | ``explain {task}: {field1}: {v1} {field2}: {v2}`` or task.json's ``input_template`` | ``{label} because {explanation}`` |

Lower-casing follows FEB's code: e-SNLI lower-cases only the explanation; ECQA lower-cases input and the
whole target; ComVE and SBIC lower-case the input sentences and the explanation. User tasks keep case.
"""

from __future__ import annotations

from typing import Any, Mapping

from sparsefit.data import Example, collapse, get_task_spec, label_options
from sparsefit.errors import SparseFitError

EXPLANATION_SEP = " because "
REFERENCE_SEP = " [SEP] "
UNIFIEDQA_EOS = "</s>"
BROKEN_EXPLANATION = "UNK"
CAUSAL_SEPARATOR = "\nAnswer:"  # decoder-only: prompt = input + separator, target = " " + target, stop at "\n"
NLI_FORMAT = ("esnli", "sample-nli")
ECQA_CHOICES = ("A", "B", "C", "D", "E")


def _field(example: Example, name: str) -> str:
    try:
        return example.inputs[name]
    except KeyError:
        raise SparseFitError(f"{example.dataset} example '{example.id}' has no input '{name}' "
                             f"(has {sorted(example.inputs)})", field=f"inputs.{name}") from None


def _unifiedqa(text: str) -> str:
    return collapse(text) + UNIFIEDQA_EOS


def format_input(example: Example) -> str:
    """The model input for `example`, byte-exact to FEB's format for its dataset."""
    dataset = example.dataset
    if dataset in NLI_FORMAT:
        return collapse(f"explain nli hypothesis: {_field(example, 'hypothesis')} premise: {_field(example, 'premise')}")
    if dataset == "ecqa":
        choices = " ".join(f"({key}) {example.inputs[key].lower()}" for key in ECQA_CHOICES if key in example.inputs)
        return _unifiedqa(f"explain {_field(example, 'question').lower()} \\n {choices}")
    if dataset == "comve":
        return _unifiedqa(f"explain what is more nonsensical? \\n choice1: {_field(example, 'sent0').lower()} "
                          f"choice2: {_field(example, 'sent1').lower()}")
    if dataset == "sbic":
        return _unifiedqa(f"explain what is this? \\n post: {_field(example, 'post').lower()}")
    return _format_user_input(example)


def _format_user_input(example: Example) -> str:
    spec = get_task_spec(example.dataset)
    if spec is not None and spec.input_template is not None:
        try:
            return collapse(spec.input_template.format(**example.inputs))
        except (KeyError, ValueError, IndexError) as err:
            raise SparseFitError(f"task '{example.dataset}' input_template does not fit example '{example.id}' "
                                 f"({err!r})", field="input_template") from err
    fields = " ".join(f"{name}: {value}" for name, value in example.inputs.items())
    return collapse(f"explain {example.dataset}: {fields}")


def _lower_explanation(dataset: str) -> bool:
    return dataset in NLI_FORMAT or dataset in ("ecqa", "comve", "sbic")


def format_target(example: Example, *, all_references: bool = False) -> str:
    """`{label} because {explanation}`; training uses the first explanation, `all_references=True` joins
    all of them with " [SEP] " (FEB's dev/test target; metrics still compare with each separately)."""
    explanations = example.explanations if all_references else example.explanations[:1]
    if not explanations:
        raise SparseFitError(f"example '{example.id}' has no reference explanation", field="explanations")
    if _lower_explanation(example.dataset):
        explanations = tuple(e.lower() for e in explanations)
    label = example.label.lower() if example.dataset == "ecqa" else example.label
    return collapse(f"{label}{EXPLANATION_SEP}{REFERENCE_SEP.join(explanations)}")


def causal_prompt(input_text: str) -> str:
    return input_text + CAUSAL_SEPARATOR


def causal_target(target_text: str) -> str:
    return " " + target_text


def parse_generation(text: str, dataset: str) -> tuple[str, str]:
    """Split a generation on the first " because ": (label, explanation).

    No separator → (whole text, "UNK"), FEB's "broken" generation. Unlike FEB's code, everything after
    the first separator is the explanation (FEB kept only the part before a second " because ").
    `dataset` is accepted so callers pass it uniformly; parsing is the same for every task.
    """
    text = collapse(text)
    label, sep, explanation = text.partition(EXPLANATION_SEP)
    if not sep:
        return text, BROKEN_EXPLANATION
    return label.strip(), explanation.strip()


def is_correct(pred_label: str, gold_label: str, dataset: str) -> bool:
    """Case-insensitive exact match; SBIC: "offensive" or "yes" means offensive, anything else not."""
    pred, gold = collapse(pred_label).lower(), collapse(gold_label).lower()
    if dataset == "sbic":
        pred_offensive = pred in ("offensive", "yes")
        return pred_offensive == (gold in ("offensive", "yes"))
    return pred == gold


_GATES: dict[str, tuple[str, str, dict[str, str]]] = {
    # dataset → (context, gate question, {label: shown text})
    "esnli": ("Given the two sentences above",
              "How is the hypothesis related to the premise?",
              {"entailment": "Entailment (the hypothesis is definitely true)",
               "neutral": "Neutral (the hypothesis might be true)",
               "contradiction": "Contradiction (the hypothesis is definitely false)"}),
    "comve": ("Given the two statements above",
              "Which statement is more nonsensical (goes against common sense)?",
              {"choice1": "Statement 1", "choice2": "Statement 2"}),
    "sbic": ("Given the post", "Is this post offensive?",
             {"offensive": "Yes, offensive", "not_offensive": "No, not offensive"}),
}


def gate_question(dataset: str, inputs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Plain data for the annotation app's gate question and rating question.

    Returns {"context", "question", "options", "option_text", "justify_question"}: the rater answers
    `question` choosing one of `options` (label strings as in the data, shown as `option_text`), then
    rates explanations with `justify_question` (FEB/e-ViL wording). ECQA's options are the question's
    own answer choices, so pass the example's `inputs` for it.
    """
    if dataset in NLI_FORMAT:
        context, question, option_text = _GATES["esnli"]
    elif dataset in _GATES:
        context, question, option_text = _GATES[dataset]
    elif dataset == "ecqa":
        context, question = "Given the question and answer choices above", "What is the answer to the question?"
        choices = [inputs[key] for key in ECQA_CHOICES if inputs and key in inputs]
        option_text = {choice: choice for choice in choices}
    else:
        spec = get_task_spec(dataset)
        context = (spec.context if spec and spec.context else "Given the input above")
        question = (spec.question if spec and spec.question else "Which label is right for this input?")
        option_text = {label: label for label in label_options(dataset)}
    return {
        "context": context,
        "question": question,
        "options": list(option_text),
        "option_text": dict(option_text),
        "justify_question": f"{context}, does this explanation justify the answer to the question?",
    }


def render_example(example: Example) -> dict[str, Any]:
    """Everything `sparsefit data show` prints for one example: the exact model input and targets."""
    return {
        "id": example.id,
        "dataset": example.dataset,
        "split": example.split,
        "label": example.label,
        "inputs": dict(example.inputs),
        "input": format_input(example),
        "target": format_target(example),
        "target_all_references": format_target(example, all_references=True),
        "explanations": list(example.explanations),
    }
