"""Loaders on the shared dev data and on hand-made fixtures of the published formats."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from sparsefit.data import (DATASETS, Example, data_hash, dataset_stats, label_options, load_examples,
                            load_examples_with_report, sbic_statement_to_explanation)
from sparsefit.errors import SparseFitError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
needs_esnli = pytest.mark.skipif(not (SHARED / "esnli" / "labels.dev").exists(),
                                 reason="shared e-SNLI dev data not found at ../shared/data/esnli")
needs_comve = pytest.mark.skipif(not (SHARED / "comve" / "Dev Data").exists(),
                                 reason="shared ComVE data not found at ../shared/data/comve")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# ------------------------------------------------------------------------------------------ e-SNLI


@needs_esnli
def test_esnli_plain_text_release_matches_the_files():
    folder = SHARED / "esnli"
    examples, report = load_examples_with_report("esnli", folder, "validation")
    labels = _lines(folder / "labels.dev")
    premises, hypotheses = _lines(folder / "s1.dev"), _lines(folder / "s2.dev")
    third = _lines(folder / "preproc1_expl_3.dev")
    assert len(examples) == len(labels) and report.skipped == {}
    assert len({e.id for e in examples}) == len(examples)
    for index in (0, 1234, len(labels) - 1):  # the last line of the explanation files has no newline
        example = examples[index]
        assert example.split == "dev" and example.dataset == "esnli"
        assert example.label == labels[index]
        assert example.inputs == {"premise": " ".join(premises[index].split()),
                                  "hypothesis": " ".join(hypotheses[index].split())}
        assert example.explanations[2] == " ".join(third[index].split()).lower()
        assert not example.inputs["premise"].endswith(" ")  # the files have trailing spaces
    stats = dataset_stats(examples)
    assert stats["examples"] == len(labels)
    assert stats["labels"] == {label: labels.count(label) for label in set(labels)}


@needs_esnli
def test_esnli_misaligned_files_name_the_file(tmp_path):
    for name in ("s1", "s2", "labels", "preproc1_expl_1"):
        lines = _lines(SHARED / "esnli" / f"{name}.dev")[:20]
        if name == "s2":
            lines = lines[:19]
        (tmp_path / f"{name}.dev").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SparseFitError, match=r"s2\.dev.*19 lines but labels\.dev has 20"):
        load_examples("esnli", tmp_path, "dev")


def test_esnli_csv_release_fixture():
    examples, report = load_examples_with_report("esnli", FIXTURES / "esnli_csv", "dev")
    assert [e.id for e in examples] == ["esnli-dev-101r1e", "esnli-dev-101r1n", "esnli-dev-101r1c"]
    assert report.skipped == {"rows without a gold label ('-')": 1}
    first = examples[0]
    assert first.inputs == {"premise": "A man plays a violin on a stage.", "hypothesis": "A person performs music."}
    assert first.label == "entailment"
    assert first.explanations == ("a violin is an instrument used to perform music.",
                                  "playing a violin is performing music.",
                                  "a man is a person, and playing is performing.")
    assert examples[1].explanations == ("not every violinist is a professional.", "nothing says he is paid.")
    train = load_examples("esnli", FIXTURES / "esnli_csv", "train")  # split over esnli_train_1/2.csv
    assert [e.label for e in train] == ["entailment", "neutral", "contradiction"]
    single = load_examples("esnli", FIXTURES / "esnli_csv" / "esnli_train_2.csv", "train")
    assert [e.id for e in single] == ["esnli-train-201r1c"]


def test_esnli_csv_unknown_label_and_missing_column(tmp_path):
    bad = tmp_path / "esnli_dev.csv"
    bad.write_text("pairID,gold_label,Sentence1,Sentence2,Explanation_1\n"
                   "a,entailment,s one,s two,e\nb,maybe,s one,s two,e\n", encoding="utf-8")
    with pytest.raises(SparseFitError) as err:
        load_examples("esnli", tmp_path, "dev")
    assert err.value.line == 3 and err.value.field == "gold_label" and "maybe" in str(err.value)
    bad.write_text("pairID,gold_label,Sentence1,Explanation_1\na,entailment,s one,e\n", encoding="utf-8")
    with pytest.raises(SparseFitError) as err:
        load_examples("esnli", tmp_path, "dev")
    assert err.value.field == "Sentence2"


def test_unknown_split_and_missing_path(tmp_path):
    with pytest.raises(SparseFitError, match="unknown split 'banana'"):
        load_examples("esnli", tmp_path, "banana")
    with pytest.raises(SparseFitError, match="not found"):
        load_examples("esnli", tmp_path / "nowhere", "dev")
    with pytest.raises(SparseFitError, match="needs a data path"):
        load_examples("esnli", None, "dev")
    with pytest.raises(SparseFitError, match="no e-SNLI 'dev' files"):
        load_examples("esnli", tmp_path, "dev")


# ------------------------------------------------------------------------------------------ ComVE


@needs_comve
def test_comve_dev_joins_the_three_upstream_files():
    folder = SHARED / "comve" / "Dev Data"
    examples = load_examples("comve", SHARED / "comve", "dev")
    with open(folder / "subtaskA_gold_answers.csv", encoding="utf-8", newline="") as f:
        answers = dict(csv.reader(f))
    with open(folder / "subtaskC_gold_answers.csv", encoding="utf-8", newline="") as f:
        reasons = {row[0]: row[1:] for row in csv.reader(f)}
    assert len(examples) == len(answers)
    for example in examples[:50]:
        native = example.id.removeprefix("comve-dev-")
        assert example.label == f"choice{int(answers[native]) + 1}"
        assert example.explanations == tuple(" ".join(r.split()).lower() for r in reasons[native])
        assert set(example.inputs) == {"sent0", "sent1"}
    assert label_options("comve") == ["choice1", "choice2"]


@needs_comve
def test_comve_upstream_folder_with_double_space_and_prefix(tmp_path):
    # Upstream spells the training folder "Training  Data" under "ALL data/"
    target = tmp_path / "ALL data" / "Training  Data"
    target.mkdir(parents=True)
    source = SHARED / "comve" / "Training Data"
    for name in ("subtaskA_data_all.csv", "subtaskA_answers_all.csv", "subtaskC_answers_all.csv"):
        keep = 11 if name == "subtaskA_data_all.csv" else 10
        (target / name).write_text("\n".join(_lines(source / name)[:keep]) + "\n", encoding="utf-8")
    examples = load_examples("comve", tmp_path, "train")
    assert len(examples) == 10 and examples[0].id == "comve-train-0"
    (target / "subtaskA_answers_all.csv").write_text("0,1\n1,7\n", encoding="utf-8")
    with pytest.raises(SparseFitError) as err:
        load_examples("comve", tmp_path, "train")
    assert "has no answer" in str(err.value) or err.value.field == "label"
    with pytest.raises(SparseFitError, match="subtaskA_test_data.csv"):
        load_examples("comve", tmp_path, "test")


# ------------------------------------------------------------------------------------------ ECQA


def test_ecqa_author_split_and_explanations():
    examples, report = load_examples_with_report("ecqa", FIXTURES / "ecqa", "train")
    # t003 has empty positives; d003 comes from CQA's dev file but ECQA puts it in train
    assert [e.id for e in examples] == ["ecqa-train-t001", "ecqa-train-t002", "ecqa-train-d003"]
    assert report.skipped == {"ECQA lines with empty positives": 1, "duplicate ECQA annotations (first kept)": 1,
                              "questions without ECQA positives": 1}
    milk = examples[0]
    assert milk.label == "Refrigerator"
    assert milk.inputs == {"question": "Where would you keep milk so it stays cold?", "A": "cupboard",
                           "B": "Refrigerator", "C": "oven", "D": "garage", "E": "mailbox"}
    # ". ".join(positives) + "." and ".." → "."
    assert milk.explanations == ("a refrigerator keeps food cold. milk spoils when it is warm.",)
    val = load_examples("ecqa", FIXTURES / "ecqa", "dev")
    assert [e.id for e in val] == ["ecqa-val-d001", "ecqa-val-d002"]
    assert val[1].explanations == ("shoes are worn on feet. they protect the feet.",)  # first annotation kept
    assert label_options("ecqa", val) == ["Water", "shoes"]


def test_ecqa_without_author_split_uses_cqa_splits(tmp_path):
    shutil.copytree(FIXTURES / "ecqa", tmp_path / "ecqa", ignore=shutil.ignore_patterns("author_split"))
    dev = load_examples("ecqa", tmp_path / "ecqa", "dev")
    assert [e.id for e in dev] == ["ecqa-val-d001", "ecqa-val-d002", "ecqa-val-d003"]
    with pytest.raises(SparseFitError, match="author_split/test_ids.txt"):
        load_examples("ecqa", tmp_path / "ecqa", "test")


def test_ecqa_bad_answer_key(tmp_path):
    shutil.copytree(FIXTURES / "ecqa", tmp_path / "ecqa")
    file = tmp_path / "ecqa" / "cqa" / "dev_rand_split.jsonl"
    lines = _lines(file)
    broken = json.loads(lines[1])
    broken["answerKey"] = "F"
    file.write_text("\n".join([lines[0], json.dumps(broken), lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(SparseFitError) as err:
        load_examples("ecqa", tmp_path / "ecqa", "dev")
    assert err.value.line == 2 and err.value.field == "answerKey"
    broken = json.loads(lines[1])
    broken["question"]["choices"][0]["text"] = " "  # would have made an example whose label is ''
    file.write_text("\n".join([lines[0], json.dumps(broken), lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(SparseFitError, match="is empty") as err:
        load_examples("ecqa", tmp_path / "ecqa", "dev")
    assert err.value.line == 2 and err.value.field == "question.choices"


# ------------------------------------------------------------------------------------------ SBIC


def test_sbic_dev_aggregates_annotations_per_post():
    examples, report = load_examples_with_report("sbic", FIXTURES / "sbic", "dev")
    by_post = {e.inputs["post"]: e for e in examples}
    women = by_post["Why do women even try to park, lol"]  # 2 of 3 say offensive and group-targeted
    assert women.label == "offensive"
    assert women.explanations == ("this post implies that women can't drive",
                                  "this post implies that women are bad drivers")
    assert by_post["you are the dumbest person i have ever met"].explanations == ("this post is a personal attack",)
    marathon = by_post["just finished my first marathon!!"]  # mean 0.5/3 < 0.5
    assert (marathon.label, marathon.explanations) == ("not_offensive", ("this post does not imply anything offensive",))
    grandpa = by_post["grandpa tried to use the microwave as a tv again"]  # mean exactly 0.5 → offensive
    assert grandpa.label == "offensive"
    assert grandpa.explanations == ("this post implies that old folks are bad with technology",
                                    "this post is implying old people are confused")
    # the post targeting a group without any implied statement is left out, and counted
    assert report.skipped == {"offensive group-targeted posts without an implied statement": 1}
    assert len(examples) == 4 and grandpa.id == "sbic-dev-00004"


def test_sbic_train_has_one_example_per_statement():
    examples = load_examples("sbic", FIXTURES / "sbic", "train")
    assert [(e.id, e.label) for e in examples] == [
        ("sbic-trn-00000-s1", "offensive"), ("sbic-trn-00000-s2", "offensive"),
        ("sbic-trn-00001-s1", "offensive"), ("sbic-trn-00001-s2", "offensive"),
        ("sbic-trn-00002", "offensive")]
    assert all(len(e.explanations) == 1 for e in examples)
    assert label_options("sbic") == ["offensive", "not_offensive"]


def test_sbic_bad_number_names_line_and_field(tmp_path):
    text = (FIXTURES / "sbic" / "SBIC.v2.dev.csv").read_text(encoding="utf-8").replace(
        "0.0,0.0,0.0,0.5,w3,h3", "0.0,0.0,0.0,maybe,w3,h3")
    (tmp_path / "SBIC.v2.dev.csv").write_text(text, encoding="utf-8")
    with pytest.raises(SparseFitError) as err:
        load_examples("sbic", tmp_path, "dev")
    assert err.value.line == 9 and err.value.field == "offensiveYN"


@pytest.mark.parametrize("value", ["2", "-1", "nan", "inf"])
def test_sbic_numbers_outside_0_to_1_are_refused(tmp_path, value):
    text = (FIXTURES / "sbic" / "SBIC.v2.dev.csv").read_text(encoding="utf-8").replace(
        "0.0,0.0,0.0,0.5,w3,h3", f"0.0,0.0,0.0,{value},w3,h3")
    (tmp_path / "SBIC.v2.dev.csv").write_text(text, encoding="utf-8")
    with pytest.raises(SparseFitError, match="between 0 and 1") as err:  # NaN would have meant "offensive"
        load_examples("sbic", tmp_path, "dev")
    assert err.value.line == 9 and err.value.field == "offensiveYN"


def test_sbic_statement_rewriting_rules():
    assert sbic_statement_to_explanation("are lazy", "men") == "this post implies that men are lazy"
    assert sbic_statement_to_explanation("is lazy", "men") == "this post implies that men are lazy"
    assert sbic_statement_to_explanation("calling women stupid", "women") == "this post is calling women stupid"
    assert sbic_statement_to_explanation("women are weak", "women") == "this post implies that women are weak"
    assert sbic_statement_to_explanation("this post trivializes abuse", "victims") == "this post trivializes abuse"


# ------------------------------------------------------------------------------------------ user tasks


def test_user_jsonl_with_task_json():
    examples = load_examples("reviews", FIXTURES / "user_jsonl" / "train.jsonl", "train")
    assert [e.id for e in examples] == ["r1", "r2", "3"]
    assert examples[0].inputs == {"review": "The blender broke after two days.", "product": "blender"}
    assert examples[1].explanations == ("It works great.", "the reviewer praises it")  # user tasks keep case
    assert label_options("reviews", examples) == ["positive", "negative"]  # task.json order
    same = load_examples("reviews", FIXTURES / "user_jsonl", "train")  # folder + split
    assert same == examples


def test_user_csv_columns():
    examples = load_examples("quiz", FIXTURES / "user_csv", "train")
    assert examples[0] == Example("q1", "quiz", "train", {"question": "Is the sky green?", "answer": "No"},
                                  "incorrect", ("the sky is blue.",))
    assert examples[1].explanations == ("birds have feathers.", "all birds have feathers.")
    assert label_options("quiz", examples) == ["correct", "incorrect"]


@pytest.mark.parametrize("content, line, field, message", [
    (b'{"inputs": {"a": "x"}, "label": "l", "explanation": "e"}\n{"inputs": {"a": "x"}, "label": "l", "explanation": "  "}\n',
     2, "explanation", "non-empty explanation"),
    (b'{"inputs": {"a": "x"}, "label": "l", "explanation": "e"}\n{"inputs": {"a": "x"}, "label": "l"}\n',
     2, "explanation", "missing"),
    (b'{"inputs": {"a": "x"}, "label": "l", "explanation": "e"}\n{"inputs": {"a": "x"}, "label": 5, "explanation": "e"}\n',
     2, "label", "non-empty string"),
    (b'{"inputs": {"a": "x"}, "label": "l", "explanation": "e"}\n{"inputs": {}, "label": "l", "explanation": "e"}\n',
     2, "inputs", "non-empty object"),
    (b'{"inputs": {"a": "x"}, "label": "l", "explanation": "e"}\n{"inputs": {"a": "x"}, "label": "l", "explanation": "e"\n',
     2, None, "invalid JSON"),
    (b'{"inputs": {"a": "x"}, "label": "l", "explanation": "caf\xc3\xa9"}\n{"inputs": {"a": "x\xe9"}, "label": "l", "explanation": "e"}\n',
     2, None, "not UTF-8"),
])
def test_user_jsonl_errors_name_line_and_field(tmp_path, content, line, field, message):
    file = tmp_path / "train.jsonl"
    file.write_bytes(content)
    with pytest.raises(SparseFitError, match=message) as err:
        load_examples("mytask", file, "train")
    assert (err.value.line, err.value.field, err.value.path) == (line, field, str(file))


def test_user_csv_errors(tmp_path):
    file = tmp_path / "train.csv"
    file.write_text("input.text,label\nhello,greeting\n", encoding="utf-8")
    with pytest.raises(SparseFitError, match="explanation") as err:
        load_examples("mytask", file, "train")
    assert err.value.line == 1
    file.write_text("text,label,explanation\nhello,greeting,a greeting\n", encoding="utf-8")
    with pytest.raises(SparseFitError, match="input.<field>"):
        load_examples("mytask", file, "train")
    file.write_text("input.text,label,explanation_1,explanation_2\nhello,greeting,a greeting,\nbye,farewell,,\n",
                    encoding="utf-8")
    with pytest.raises(SparseFitError, match="non-empty explanation") as err:
        load_examples("mytask", file, "train")
    assert err.value.line == 3
    file.write_bytes("input.text,label,explanation\nhello,greeting,ok\nbye,farewell,\xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(SparseFitError, match="not UTF-8") as err:
        load_examples("mytask", file, "train")
    assert err.value.line == 3


def test_task_json_labels_and_template_are_checked(tmp_path):
    (tmp_path / "task.json").write_text(json.dumps({"labels": ["yes", "no"], "input_template": "q: {question}"}),
                                        encoding="utf-8")
    file = tmp_path / "train.jsonl"
    file.write_text('{"inputs": {"question": "x"}, "label": "yes", "explanation": "e"}\n'
                    '{"inputs": {"question": "x"}, "label": "maybe", "explanation": "e"}\n', encoding="utf-8")
    with pytest.raises(SparseFitError, match="unknown label 'maybe'") as err:
        load_examples("yn", file, "train")
    assert err.value.line == 2
    file.write_text('{"inputs": {"text": "x"}, "label": "yes", "explanation": "e"}\n', encoding="utf-8")
    with pytest.raises(SparseFitError, match=r"input_template uses \{question\}"):
        load_examples("yn", file, "train")
    file.write_text('{"id": "a", "inputs": {"question": "x"}, "label": "yes", "explanation": "e"}\n'
                    '{"id": "a", "inputs": {"question": "y"}, "label": "no", "explanation": "e"}\n', encoding="utf-8")
    with pytest.raises(SparseFitError, match="duplicate example id 'a'"):
        load_examples("yn", file, "train")


def test_user_task_label_spellings_task_json_keys_and_templates(tmp_path):
    file = tmp_path / "train.jsonl"
    row = '{{"inputs": {{"text": "x"}}, "label": "{}", "explanation": "e"}}\n'
    file.write_text(row.format("pos") + row.format("neg") + row.format("Pos "), encoding="utf-8")
    with pytest.raises(SparseFitError, match="label 'Pos' differs from 'pos' \\(line 1\\) only in case") as err:
        load_examples("mytask", file, "train")
    assert err.value.line == 3
    (tmp_path / "task.json").write_text(json.dumps({"label": ["pos", "neg"]}), encoding="utf-8")
    with pytest.raises(SparseFitError, match="field 'label': unknown key; did you mean 'labels'"):
        load_examples("mytask", file, "train")
    file.write_text(row.format("pos"), encoding="utf-8")
    for template in ("{text.foo}", "{text[k]}"):
        (tmp_path / "task.json").write_text(json.dumps({"input_template": template}), encoding="utf-8")
        with pytest.raises(SparseFitError, match="input_template is not a valid format string"):
            load_examples("mytask", file, "train")
    (tmp_path / "task.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(SparseFitError, match="task.json: JSON nested too deeply"):
        load_examples("mytask", file, "train")


def test_line_separators_inside_json_strings_stay_in_their_line(tmp_path):
    """json.dumps(ensure_ascii=False) leaves U+2028/U+2029/U+0085 raw; str.splitlines() would cut there."""
    file = tmp_path / "train.jsonl"
    rows = [{"inputs": {"text": f"a{sep}b"}, "label": "l", "explanation": "e"} for sep in "\u2028\u2029\u0085"]
    file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    examples = load_examples("mytask", file, "train")
    assert [e.inputs["text"] for e in examples] == ["a b"] * 3  # one row each; the separator is whitespace


def test_csv_header_naming_a_column_twice_is_refused(tmp_path):
    file = tmp_path / "train.csv"
    file.write_text("input.text,label,label,explanation\nhello,pos,neg,e\n", encoding="utf-8")
    with pytest.raises(SparseFitError, match="names column 'label' twice") as err:
        load_examples("mytask", file, "train")
    assert err.value.line == 1


# ------------------------------------------------------------------------------------------ sample, hashing


def test_sample_nli_ships_with_the_package():
    examples = load_examples("sample-nli", None, "train")
    stats = dataset_stats(examples)
    assert stats["labels"] == {"contradiction": 30, "entailment": 30, "neutral": 30}
    assert len({(e.inputs["premise"], e.inputs["hypothesis"]) for e in examples}) == 90
    assert all(e.explanations[0] == e.explanations[0].lower() for e in examples)
    assert "sample-nli" in DATASETS and label_options("sample-nli") == ["entailment", "neutral", "contradiction"]


def test_data_hash_is_canonical_and_sensitive():
    examples = load_examples("sample-nli", None, "train")
    again = load_examples("sample-nli", None, "train")
    assert data_hash(examples) == data_hash(again)
    assert len(data_hash(examples)) == 64
    changed = list(examples)
    changed[5] = Example(**{**changed[5].__dict__, "explanations": ("something else",)})
    assert data_hash(changed) != data_hash(examples)
    assert data_hash(list(reversed(examples))) != data_hash(examples)


def test_left_out_rows_are_logged_with_their_count(caplog):
    with caplog.at_level("INFO", logger="sparsefit.data"):
        load_examples("sbic", FIXTURES / "sbic", "dev")
    assert "4 examples; left out: 1 offensive group-targeted posts without an implied statement" in caplog.text
