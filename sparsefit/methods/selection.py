"""SparseFit (train a chosen subset of the base weights in place) and full fine-tuning.

The subset is written in a small component grammar, comma-separated, e.g. "self.k,ln" or "enc.ffn,dec.cross":

| token | T5 (encoder-decoder) | decoder-only (Llama/Gemma/Qwen style) |
|---|---|---|
| self.q/k/v/o, self | `SelfAttention.{q,k,v,o}` | `self_attn.{q,k,v,o}_proj` |
| cross.q/k/v/o, cross | `EncDecAttention.{q,k,v,o}` (decoder) | not applicable |
| ffn | `DenseReluDense.*` | `mlp.*` |
| ln | block layer norms `.layer_norm` (not `final_layer_norm`) | every norm weight |
| final_ln | `encoder/decoder.final_layer_norm` | the final `model.norm` |
| lm_head | `lm_head` (the shared embedding when tied) | `lm_head` (the embedding when tied) |
| embed | `shared` / `embed_tokens` | `embed_tokens` |
| bias | every bias vector (T5 has none) | every bias vector |
| re:PATTERN | parameters whose name matches the regular expression | same |

Prefix `enc.` or `dec.` restricts a token to the encoder or decoder (T5). Presets (REFERENCE §4):
`paper` = T5 `self.k,ln`; decoder-only `self.v,ln` (searched; was `self.q,ln`). A preset may also be a
JSON file (what `python -m sparsefit search` writes as best_preset.json):
{"method": "sparsefit", "components": "self.v,ln", "lr": 1e-4, "steps": 150}; its lr and steps apply unless
the run config sets them.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from torch import nn

from sparsefit.errors import SparseFitError
from sparsefit.methods.base import Arch, SparseMethod, freeze_all, register_method

# T5: the paper's keys + layer norms. Decoder-only (no such model in the paper): what `python -m sparsefit search`
# chose on e-SNLI dev validation episodes at a 5% budget, value projections + norms (docs/search.md, section 6).
PRESETS = {"paper": {"seq2seq": "self.k,ln", "causal": "self.v,ln"}}

_T5_PATTERNS = {
    "self.q": r"\.layer\.0\.SelfAttention\.q\.weight$", "self.k": r"\.layer\.0\.SelfAttention\.k\.weight$",
    "self.v": r"\.layer\.0\.SelfAttention\.v\.weight$", "self.o": r"\.layer\.0\.SelfAttention\.o\.weight$",
    "cross.q": r"\.EncDecAttention\.q\.weight$", "cross.k": r"\.EncDecAttention\.k\.weight$",
    "cross.v": r"\.EncDecAttention\.v\.weight$", "cross.o": r"\.EncDecAttention\.o\.weight$",
    "ffn": r"\.DenseReluDense\.", "ln": r"\.layer\.\d+\.layer_norm\.weight$",
    "final_ln": r"(^|\.)(encoder|decoder)\.final_layer_norm\.weight$", "lm_head": r"(^|\.)lm_head\.weight$",
    "embed": r"(^|\.)(shared|embed_tokens)\.weight$", "bias": r"\.bias$",
}
_CAUSAL_PATTERNS = {
    "self.q": r"\.self_attn\.q_proj\.(weight|bias)$", "self.k": r"\.self_attn\.k_proj\.(weight|bias)$",
    "self.v": r"\.self_attn\.v_proj\.(weight|bias)$", "self.o": r"\.self_attn\.o_proj\.(weight|bias)$",
    "ffn": r"\.mlp\.", "ln": r"norm[^.]*\.weight$", "final_ln": r"^(model\.)?norm\.weight$",
    "lm_head": r"(^|\.)lm_head\.weight$", "embed": r"(^|\.)embed_tokens\.weight$", "bias": r"\.bias$",
}
_GROUPS = {"self": ["self.q", "self.k", "self.v", "self.o"], "cross": ["cross.q", "cross.k", "cross.v", "cross.o"]}


def _expand(token: str) -> list[str]:
    return _GROUPS.get(token, [token])


def _token_regexes(spec: str, arch: Arch) -> list[tuple[str, re.Pattern]]:
    patterns = _T5_PATTERNS if arch.kind == "seq2seq" else _CAUSAL_PATTERNS
    out: list[tuple[str, re.Pattern]] = []
    for raw in (t.strip() for t in spec.split(",")):
        if not raw:
            continue
        if raw.startswith("re:"):
            try:
                out.append((raw, re.compile(raw[3:])))
            except re.error as err:
                raise SparseFitError(f"bad regular expression in {raw!r}: {err}", field="components") from err
            continue
        scope, token = "", raw
        if raw.startswith(("enc.", "dec.")):
            scope, token = raw[:3], raw[4:]
            if arch.kind == "causal" and scope == "enc":
                raise SparseFitError(f"{raw!r}: a decoder-only model has no encoder", field="components")
        for name in _expand(token):
            if name not in patterns:
                known = sorted(set(patterns) | set(_GROUPS))
                why = " (decoder-only models have no cross-attention)" if name.startswith("cross") else ""
                raise SparseFitError(f"unknown component {raw!r}{why}; known: {', '.join(known)}, re:PATTERN, "
                                     "with optional enc./dec. prefix", field="components")
            prefix = {"enc": r"^(.*\.)?encoder\.", "dec": r"^(.*\.)?decoder\."}.get(scope, "") \
                if arch.kind == "seq2seq" else ""
            out.append((raw, re.compile(prefix + ".*" + patterns[name] if prefix else patterns[name])))
    if not out:
        raise SparseFitError("empty component list", field="components")
    return out


PRESET_FILE_KEYS = ("method", "components", "budget", "lr", "steps")


def parse_budget(value: Any, field: str = "budget") -> float:
    """A parameter budget as a fraction of all parameters: '5%' -> 0.05, 0.05 -> 0.05 ('5' is ambiguous)."""
    text = str(value).strip()
    try:
        fraction = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise SparseFitError(f"budget {value!r} is not a number; write e.g. 5% or 0.05", field=field) from None
    if not text.endswith("%") and fraction >= 1:  # a bare 1 is as likely 1% as everything
        raise SparseFitError(f"budget {value!r} is ambiguous; write {text}% or {fraction / 100:g}", field=field)
    if not 0 < fraction <= 1:
        raise SparseFitError(f"budget {value!r} must be above 0 and at most 100%", field=field)
    return fraction


def is_preset_file(preset: Any) -> bool:
    return isinstance(preset, str) and (preset.endswith(".json") or "/" in preset or Path(preset).is_file())


def read_preset_file(path: str | Path, method: str | None = None) -> dict[str, Any]:
    """A preset file's settings; unknown keys, a missing file or another method's preset are one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise SparseFitError("preset file not found", path=str(path), field="preset")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SparseFitError(f"cannot parse preset file: {err.msg}", path=str(path), line=err.lineno) from None
    if not isinstance(data, dict):
        raise SparseFitError("a preset file holds one JSON object", path=str(path))
    for key in data:
        if key not in PRESET_FILE_KEYS:
            raise SparseFitError(f"unknown key in preset file; known: {', '.join(PRESET_FILE_KEYS)}",
                                 path=str(path), field=key)
    written_for = data.get("method") or ("fish" if "budget" in data else "sparsefit")  # a budget is fish's
    if method and written_for != method:
        raise SparseFitError(f"this preset is for method {written_for!r}; run it with --method {written_for}",
                             path=str(path), field="method")
    check_preset_values(data, path)
    return data


def check_preset_values(data: dict[str, Any], path: Path) -> None:
    """Wrong types fail here, naming the key, rather than as a TypeError mid-training."""
    lr, steps = data.get("lr"), data.get("steps")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise SparseFitError(f"'lr' must be a positive number, got {lr!r}", path=str(path), field="lr")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise SparseFitError(f"'steps' must be a whole number of at least 1, got {steps!r}", path=str(path),
                             field="steps")
    if data.get("budget") is not None:
        parse_budget(data["budget"], "budget")
    if data.get("components") is not None and not isinstance(data["components"], str):
        raise SparseFitError(f"'components' must be a string such as \"self.v,ln\", got {data['components']!r}",
                             path=str(path), field="components")


def preset_digest(options: dict[str, Any]) -> str | None:
    """sha256 of the preset file named in a method's options (None without one): a run records it, so a
    resumed run can tell that the file was rewritten since."""
    preset = options.get("preset")
    if not is_preset_file(preset) or not Path(preset).is_file():
        return None
    return hashlib.sha256(Path(preset).read_bytes()).hexdigest()


def preset_training(preset: Any) -> dict[str, Any]:
    """lr / steps a preset file asks for ({} for named presets)."""
    if not is_preset_file(preset):
        return {}
    data = read_preset_file(preset)
    return {k: data[k] for k in ("lr", "steps") if data.get(k) is not None}


def resolve_components(spec: str | None, preset: str | None, arch: Arch) -> str:
    if spec and preset:
        raise SparseFitError("give either components or preset, not both", field="method_options")
    if preset and is_preset_file(preset):
        data = read_preset_file(preset, "sparsefit")
        if not data.get("components"):
            raise SparseFitError("preset file has no 'components'", path=str(preset), field="components")
        return str(data["components"])
    if preset:
        if preset not in PRESETS:
            raise SparseFitError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)} or a preset .json file",
                                 field="preset")
        return PRESETS[preset][arch.kind]
    return spec or PRESETS["paper"][arch.kind]


def select_parameters(model: nn.Module, spec: str, arch: Arch, strict: bool = True) -> list[str]:
    """Names of the parameters matched by the component spec; every token must match something (if strict)."""
    regexes = _token_regexes(spec, arch)
    names = [name for name, _ in model.named_parameters()]  # tied weights appear once, under the first name
    tied_head = getattr(model.config, "tie_word_embeddings", False) and not any(
        re.search(r"(^|\.)lm_head\.weight$", n) for n in names)
    chosen: list[str] = []
    for raw, regex in regexes:
        hits = [n for n in names if regex.search(n)]
        if not hits and raw.endswith("lm_head") and tied_head:
            hits = [n for n in names if re.search(r"(shared|embed_tokens)\.weight$", n)]
        if not hits and strict:
            raise SparseFitError(f"component {raw!r} matches no parameter of this {arch.model_type} model",
                                 field="components")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


@register_method
class SparseFit(SparseMethod):
    """Train only the selected base weights (in place); everything else stays bit-identical."""

    name = "sparsefit"
    description = "train a chosen subset of the base weights (paper preset: self-attention keys + layer norms)"

    def __init__(self, components: str | None = None, preset: str | None = None):
        self.components, self.preset = components, preset
        self.resolved: str | None = None
        self.parameter_names: list[str] = []

    def loading_options(self) -> dict[str, Any] | None:
        return {"components": self.resolved} if is_preset_file(self.preset) else None

    def prepare(self, model: nn.Module, arch: Arch) -> nn.Module:
        self.resolved = resolve_components(self.components, self.preset, arch)
        self.parameter_names = select_parameters(model, self.resolved, arch)
        freeze_all(model)
        params = dict(model.named_parameters())
        for name in self.parameter_names:
            params[name].requires_grad_(True)
        return model

    def selection(self) -> dict[str, Any]:
        return {"components": self.resolved, "preset": self.preset, "tensors": len(self.parameter_names)}

    def training_defaults(self) -> dict[str, Any]:
        return preset_training(self.preset)


@register_method
class FullFineTuning(SparseMethod):
    name = "full"
    description = "train every parameter (the baseline sparse methods are compared with)"

    def prepare(self, model: nn.Module, arch: Arch) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
