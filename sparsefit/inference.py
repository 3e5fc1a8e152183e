"""Single-example prediction for the demo, and the embedded default run (quickstart).

The annotation app imports this module lazily (inside functions) so it starts without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sparsefit.errors import SparseFitError
from sparsefit.paths import QUICKSTART_RUN, quickstart_dir

Progress = Callable[[float, str], None]

INPUT_FIELDS = {
    "esnli": ["premise", "hypothesis"], "sample-nli": ["premise", "hypothesis"], "comve": ["sent0", "sent1"],
    "sbic": ["post"], "ecqa": ["question", "A", "B", "C", "D", "E"],
}


def quickstart_config(device: str = "auto", dtype: str = "float32", compile: bool = False):
    """The embedded default: Gemma-3-270M, the bundled sample NLI task, SparseFit with the decoder-only
    preset and the lr and steps the subset search chose on e-SNLI dev (`DECODER_TRAINING`, docs/search.md).
    """
    from sparsefit.config import DECODER_TRAINING, RunConfig, TrainConfig
    return RunConfig(dataset="sample-nli", data_path=None, train_split="train", eval_split="train",
                     model="default", method="sparsefit", method_options={"preset": "paper"}, seed=7004,
                     n_train=48, n_eval=None, train=TrainConfig(**DECODER_TRAINING["sparsefit"]),
                     max_new_tokens=40, name="quickstart", device=device, dtype=dtype, compile=compile)


def build_quickstart(progress: Progress | None = None, out_dir: str | Path | None = None, *,
                     device: str = "auto", dtype: str = "float32", compile: bool = False) -> Path:
    """Run the embedded default end to end (train → predict → score); returns the predictions file."""
    from sparsefit.backbones import load_backbone, resolve_placement
    from sparsefit.runner import run_episode
    resolve_placement(device, dtype)  # a bad --device stops here, before the model is converted or loaded
    out = Path(out_dir) if out_dir else quickstart_dir()
    report = progress or (lambda fraction, message: None)
    report(0.0, "Loading the default model (the first time converts it, about a minute)")
    backbone = load_backbone("default", progress=lambda f, m: report(0.3 * f, m), device=device, dtype=dtype)
    report(0.3, "Fine-tuning on the sample task and generating explanations (about two minutes)")
    run_episode(quickstart_config(device, dtype, compile), out, backbone=backbone)
    report(1.0, "Quickstart predictions written")
    return out / "predictions.jsonl"


@dataclass
class Predictor:
    """A loaded model (base or fine-tuned and merged) that labels and explains one input at a time."""

    backbone: Any
    model: Any
    name: str
    manifest: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 48

    @classmethod
    def load(cls, model: str = "default", progress: Progress | None = None, device: str = "auto",
             dtype: str = "float32") -> "Predictor":
        """`model`: "default", "tiny-t5", "tiny-causal", a hub id / model folder, "quickstart", or a run folder.

        `device`: auto (CUDA when available), cpu, cuda or cuda:N; `dtype`: float32 or bfloat16."""
        from sparsefit.backbones import load_backbone, resolve_placement
        from sparsefit.checkpoint import MANIFEST_FILE, load_delta
        resolve_placement(device, dtype)
        run_dir = quickstart_dir() if model == QUICKSTART_RUN else Path(model)
        if (run_dir / MANIFEST_FILE).exists():
            backbone, trained, method, manifest = load_delta(run_dir, progress=progress, device=device, dtype=dtype)
            return cls(backbone, method.merge(trained), str(run_dir), manifest)
        if model == QUICKSTART_RUN:
            raise SparseFitError("no quickstart run yet: run `python -m sparsefit quickstart` first")
        backbone = load_backbone(model, progress=progress, device=device, dtype=dtype)
        return cls(backbone, backbone.model, model)

    @staticmethod
    def input_fields(dataset: str) -> list[str]:
        return list(INPUT_FIELDS.get(dataset, ["input"]))

    def predict(self, dataset: str, inputs: dict[str, str]) -> dict[str, str]:
        from sparsefit.data import Example
        from sparsefit.generate import generate
        from sparsefit.prompts import format_input, parse_generation
        missing = [f for f in self.input_fields(dataset) if not str(inputs.get(f, "")).strip()] \
            if dataset in INPUT_FIELDS else []
        if missing:
            raise SparseFitError(f"please fill in: {', '.join(missing)}", field=missing[0])
        example = Example(id="demo", dataset=dataset, split="demo", inputs={k: str(v) for k, v in inputs.items()},
                          label="", explanations=("",))
        prompt = format_input(example)
        raw = generate(self.backbone, self.model, [prompt], batch_size=1, max_new_tokens=self.max_new_tokens,
                       progress=False)[0]
        label, explanation = parse_generation(raw, dataset)
        return {"label": label, "explanation": explanation, "raw_generation": raw, "prompt": prompt}
