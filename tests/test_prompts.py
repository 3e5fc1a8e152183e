"""FEB input/target formats, byte-exact against strings written by hand from REFERENCE §2."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsefit.data import Example, load_examples
from sparsefit.errors import SparseFitError
from sparsefit.prompts import (CAUSAL_SEPARATOR, causal_prompt, causal_target, format_input, format_target,
                               gate_question, is_correct, parse_generation, render_example)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make(dataset: str, inputs: dict[str, str], label: str, *explanations: str) -> Example:
    return Example(f"{dataset}-x", dataset, "dev", inputs, label, tuple(explanations))


def test_esnli_format():
    example = make("esnli", {"premise": "Two women are embracing .", "hypothesis": "The sisters are  hugging ."},
                   "neutral", "Not all women are sisters .", "they may be friends .")
    assert format_input(example) == "explain nli hypothesis: The sisters are hugging . premise: Two women are embracing ."
    assert format_target(example) == "neutral because not all women are sisters ."
    assert format_target(example, all_references=True) == (
        "neutral because not all women are sisters . [SEP] they may be friends .")


def test_sample_nli_formats_like_esnli():
    example = make("sample-nli", {"premise": "A dog runs.", "hypothesis": "An animal moves."}, "entailment",
                   "A dog is an animal.")
    assert format_input(example) == "explain nli hypothesis: An animal moves. premise: A dog runs."
    assert format_target(example) == "entailment because a dog is an animal."


def test_ecqa_format():
    example = make("ecqa", {"question": "Where  would you keep Milk?", "A": "Cupboard", "B": "Refrigerator",
                            "C": "oven", "D": "garage", "E": "mailbox"},
                   "Refrigerator", "A refrigerator keeps food cold. Milk spoils when warm.")
    assert format_input(example) == (
        "explain where would you keep milk? \\n (A) cupboard (B) refrigerator (C) oven (D) garage (E) mailbox</s>")
    assert "\n" not in format_input(example)  # a literal backslash-n, not a newline
    assert format_target(example) == "refrigerator because a refrigerator keeps food cold. milk spoils when warm."


def test_comve_format():
    example = make("comve", {"sent0": "He put an Elephant into the fridge. ", "sent1": "He put a turkey into the fridge."},
                   "choice1", "An elephant is much bigger than a fridge.", "A fridge is too small.")
    assert format_input(example) == ("explain what is more nonsensical? \\n choice1: he put an elephant into the "
                                      "fridge. choice2: he put a turkey into the fridge.</s>")
    assert format_target(example) == "choice1 because an elephant is much bigger than a fridge."
    assert format_target(example, all_references=True) == (
        "choice1 because an elephant is much bigger than a fridge. [SEP] a fridge is too small.")


def test_sbic_format():
    example = make("sbic", {"post": "Why do Women even try to park, lol "}, "offensive",
                   "this post implies that women can't drive")
    assert format_input(example) == "explain what is this? \\n post: why do women even try to park, lol</s>"
    assert format_target(example) == "offensive because this post implies that women can't drive"
    calm = make("sbic", {"post": "just finished my first marathon!!"}, "not_offensive",
                "this post does not imply anything offensive")
    assert format_target(calm) == "not_offensive because this post does not imply anything offensive"


def test_user_task_default_and_template():
    example = make("quiz", {"question": "Is the sky green?", "answer": "No"}, "incorrect", "The sky is Blue.")
    assert format_input(example) == "explain quiz: question: Is the sky green? answer: No"
    assert format_target(example) == "incorrect because The sky is Blue."  # user tasks keep case
    reviews = load_examples("reviews", FIXTURES / "user_jsonl", "train")  # task.json has an input_template
    assert format_input(reviews[0]) == "explain sentiment: The blender broke after two days. (product: blender)"
    assert format_target(reviews[1], all_references=True) == (
        "positive because It works great. [SEP] the reviewer praises it")


def test_missing_input_field_is_a_clear_error():
    with pytest.raises(SparseFitError, match="no input 'hypothesis'"):
        format_input(make("esnli", {"premise": "p"}, "neutral", "e"))


@pytest.mark.skipif(not (SHARED / "esnli" / "labels.dev").exists(), reason="shared e-SNLI data not found")
def test_real_esnli_first_example():
    example = load_examples("esnli", SHARED / "esnli", "dev")[0]
    premise = (SHARED / "esnli" / "s1.dev").read_text(encoding="utf-8").splitlines()[0].strip()
    hypothesis = (SHARED / "esnli" / "s2.dev").read_text(encoding="utf-8").splitlines()[0].strip()
    assert format_input(example) == f"explain nli hypothesis: {hypothesis} premise: {premise}"
    assert "  " not in format_target(example, all_references=True)
    assert format_target(example, all_references=True).count(" [SEP] ") == 2


def test_causal_wrapping():
    assert CAUSAL_SEPARATOR == "\nAnswer:"
    assert causal_prompt("explain nli hypothesis: a premise: b") == "explain nli hypothesis: a premise: b\nAnswer:"
    assert causal_target("neutral because x") == " neutral because x"


@pytest.mark.parametrize("text, label, explanation", [
    ("entailment because a dog is an animal .", "entailment", "a dog is an animal ."),
    ("  neutral because not all because-clauses split  twice because why ", "neutral",
     "not all because-clauses split twice because why"),
    ("contradiction", "contradiction", "UNK"),
    ("entailment because", "entailment because", "UNK"),
    ("", "", "UNK"),
    ("choice2 because\nbirds fly", "choice2", "birds fly"),
])
def test_parse_generation(text, label, explanation):
    assert parse_generation(text, "esnli") == (label, explanation)


def test_is_correct():
    assert is_correct("Entailment", "entailment", "esnli")
    assert not is_correct("entailment.", "entailment", "esnli")
    assert is_correct("refrigerator", "Refrigerator", "ecqa")
    assert is_correct("yes", "offensive", "sbic") and is_correct("Offensive", "offensive", "sbic")
    assert is_correct("no", "not_offensive", "sbic") and is_correct("whatever", "not_offensive", "sbic")
    assert not is_correct("not_offensive", "offensive", "sbic")
    assert not is_correct("offensive", "not_offensive", "sbic")


def test_gate_questions():
    esnli = gate_question("esnli")
    assert esnli["context"] == "Given the two sentences above"
    assert esnli["options"] == ["entailment", "neutral", "contradiction"]
    assert esnli["justify_question"] == ("Given the two sentences above, does this explanation justify the answer "
                                         "to the question?")
    assert gate_question("sample-nli")["options"] == esnli["options"]
    assert gate_question("sbic")["context"] == "Given the post"
    assert gate_question("comve")["options"] == ["choice1", "choice2"]
    ecqa = gate_question("ecqa", {"question": "q", "A": "x", "B": "y", "C": "z", "D": "v", "E": "w"})
    assert ecqa["options"] == ["x", "y", "z", "v", "w"]
    load_examples("reviews", FIXTURES / "user_jsonl", "train")
    reviews = gate_question("reviews")
    assert reviews["options"] == ["positive", "negative"]
    assert reviews["question"] == "Is this review positive or negative?"
    assert reviews["context"] == "Given the review above"


def test_render_example_for_data_show():
    example = make("comve", {"sent0": "A.", "sent1": "B."}, "choice2", "One.", "Two.")
    shown = render_example(example)
    assert shown["input"] == "explain what is more nonsensical? \\n choice1: a. choice2: b.</s>"
    assert shown["target"] == "choice2 because one."
    assert shown["target_all_references"] == "choice2 because one. [SEP] two."
    assert shown["explanations"] == ["One.", "Two."] and shown["label"] == "choice2"
    assert len({example, make("comve", {"sent0": "A.", "sent1": "B."}, "choice2", "One.", "Two.")}) == 1
