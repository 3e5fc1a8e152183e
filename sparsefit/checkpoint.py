"""Save only the trained tensors (safetensors) plus a manifest; load them back onto the right base model."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from torch import nn

from sparsefit.errors import SparseFitError
from sparsefit.methods.base import SparseMethod, get_method
from sparsefit.methods.selection import preset_digest

DELTA_FILE = "delta.safetensors"
MANIFEST_FILE = "manifest.json"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    versions = {"python": platform.python_version()}
    for name in ("sparsefit", "torch", "transformers", "peft", "safetensors"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            if name == "sparsefit":
                from sparsefit import __version__
                versions[name] = __version__
    return versions


def save_delta(out_dir: str | Path, method: SparseMethod, model: nn.Module, manifest: dict[str, Any]) -> Path:
    """Write delta.safetensors (only what the method trained, plus its masks) and manifest.json."""
    from safetensors.torch import save_file
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = method.trained_state(model)
    if not tensors:
        raise SparseFitError(f"method '{method.name}' reported no trained tensors to save")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / DELTA_FILE),
              metadata={"method": method.name, "base_fingerprint": manifest.get("base_fingerprint", "")})
    write_manifest(out, method, {**manifest, "saved_tensors": len(tensors),
                                 "saved_parameters": sum(t.numel() for t in tensors.values())})
    return out


def write_manifest(out_dir: str | Path, method: SparseMethod, manifest: dict[str, Any]) -> Path:
    """manifest.json with the method, its selection and library versions (alone for methods that train nothing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {**manifest, "method": method.name, "selection": method.selection(), "versions": library_versions()}
    loading = method.loading_options()
    if loading is not None:
        manifest["loading_options"] = loading
    digest = preset_digest(manifest.get("method_options") or {})
    if digest:
        manifest["preset_sha256"] = digest
    path = out / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST_FILE
    if not path.exists():
        raise SparseFitError("not a SparseFit run folder (no manifest.json)", path=str(run_dir))
    return json.loads(path.read_text(encoding="utf-8"))


def load_delta(run_dir: str | Path, backbone=None, *, device=None, dtype=None, progress=None):
    """Rebuild a trained model: base model (checked by fingerprint) + method.prepare + saved tensors.

    Returns (backbone, model, method, manifest). Loading onto a different base model is refused. A given
    `backbone` is used in place (its model becomes the trained one): pass a fresh one, or none. Without one,
    the base model loads on `device` (None: "auto") in `dtype` (None: the dtype the run trained in).
    """
    from safetensors.torch import load_file
    from sparsefit.backbones import load_backbone, resolve_placement
    run_dir = Path(run_dir)
    if backbone is None:
        resolve_placement(device, dtype)  # a bad device or dtype is reported before the manifest is read
    manifest = read_manifest(run_dir)
    if backbone is None:
        backbone = load_backbone(manifest["base_model"], progress=progress, device=device or "auto",
                                 dtype=dtype or manifest.get("dtype") or "float32")
    if backbone.fingerprint != manifest["base_fingerprint"]:
        raise SparseFitError(
            f"this delta was trained on base model {manifest['base_model']!r} (fingerprint "
            f"{manifest['base_fingerprint']}), but the loaded base {backbone.model_id!r} has fingerprint "
            f"{backbone.fingerprint}; load it onto the same base weights", path=str(run_dir / MANIFEST_FILE),
            field="base_fingerprint")
    # a preset file as it resolved at training time: the file itself may have moved or changed since
    method = get_method(manifest["method"], **(manifest.get("loading_options") or manifest.get("method_options", {})))
    if hasattr(method, "total_steps") and "train" in manifest:
        method.total_steps = manifest["train"].get("steps", method.total_steps)
    model = method.prepare(backbone.model, backbone.arch)
    method.load_trained(model, load_file(str(run_dir / DELTA_FILE)))
    model.eval()
    return backbone, model, method, manifest
