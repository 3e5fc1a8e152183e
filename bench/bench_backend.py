"""Backend speed on this CPU, measured side by side in one run, printed as a table of ratios to the targets.

    python bench/bench_backend.py            # everything (about 10 minutes on 2 cores)
    python bench/bench_backend.py --skip-quickstart

Targets (backend issue): quickstart <= 5 min on a first run (conversion included) and <= 3 min afterwards;
a training step at batch 4 <= 2.5 s; batched generation >= 3x the throughput of one example at a time.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed_quickstart(models_dir: Path) -> float:
    env = {**os.environ, "SPARSEFIT_MODELS_DIR": str(models_dir), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sparsefit", "quickstart"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def step_seconds(backbone, threads: int, steps: int = 6) -> float:
    import torch
    from sparsefit.config import TrainConfig
    from sparsefit.data import load_examples
    from sparsefit.methods import get_method
    from sparsefit.prompts import format_input, format_target
    from sparsefit.train import train
    torch.set_num_threads(threads)
    examples = load_examples("sample-nli", None, "train")[:48]
    method = get_method("sparsefit", preset="paper")
    model = method.prepare(copy.deepcopy(backbone.model), backbone.arch)
    result = train(backbone, method, model, [format_input(e) for e in examples],
                   [format_target(e) for e in examples], TrainConfig(lr=1e-4, steps=steps + 1, batch_size=4),
                   progress=False)
    return result.seconds_per_step  # includes one warm-up step; close enough at this size


def generation_throughput(backbone, model, batch_size: int, n: int) -> float:
    from sparsefit.data import load_examples
    from sparsefit.generate import generate
    from sparsefit.prompts import format_input
    prompts = [format_input(e) for e in load_examples("sample-nli", None, "train")[-n:]]
    started = time.perf_counter()
    generate(backbone, model, prompts, batch_size=batch_size, max_new_tokens=40, progress=False)
    return n / (time.perf_counter() - started)


def fine_tuned_model(run_dir: Path | None):
    """Evaluation generates with a fine-tuned model (short, regular answers); fall back to the base model."""
    from sparsefit.backbones import load_backbone
    from sparsefit.checkpoint import load_delta
    if run_dir is not None and (run_dir / "manifest.json").exists():
        backbone, model, method, _ = load_delta(run_dir, load_backbone("default"))
        return backbone, method.merge(model)
    backbone = load_backbone("default")
    return backbone, backbone.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-quickstart", action="store_true")
    args = parser.parse_args()
    rows: list[tuple[str, float, str, float, str]] = []  # (what, measured, unit, target, direction)
    tmp = tempfile.TemporaryDirectory()
    quickstart_run = None
    if not args.skip_quickstart:
        first = timed_quickstart(Path(tmp.name))
        again = timed_quickstart(Path(tmp.name))
        quickstart_run = Path(tmp.name) / "quickstart"
        rows += [("quickstart, first run (conversion included)", first, "s", 300, "<="),
                 ("quickstart, later run", again, "s", 180, "<=")]
    import torch
    from sparsefit.paths import quickstart_dir
    backbone, model = fine_tuned_model(quickstart_run or quickstart_dir())
    for threads in (1, 2):
        rows.append((f"train step, batch 4, sparsefit, {threads} thread(s)", step_seconds(backbone, threads), "s",
                     2.5, "<="))
    torch.set_num_threads(2)
    single = generation_throughput(backbone, model, 1, 8)
    batched = generation_throughput(backbone, model, 32, 32)
    rows += [("generation, one at a time", single, "ex/s", 0, ""),
             ("generation, batch 32", batched, "ex/s", 0, ""),
             ("generation speed-up, batched / single", batched / single, "x", 3.0, ">=")]
    print(f"\n{'measurement':<48} {'value':>9} {'unit':<5} {'target':>8}  {'ratio':>6}  ok")
    for what, value, unit, target, direction in rows:
        if not direction:
            print(f"{what:<48} {value:>9.2f} {unit:<5}")
            continue
        ratio = value / target
        ok = ratio <= 1 if direction == "<=" else ratio >= 1
        print(f"{what:<48} {value:>9.2f} {unit:<5} {direction}{target:>6}  {ratio:>6.2f}  {'yes' if ok else 'NO'}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
