"""torchvision's ImageNet ResNet-18 → the safetensors file `apprentice train --backbone-weights`
takes. Run once per machine; the ACT paper preset fine-tunes from these weights.

    # https://download.pytorch.org/models/resnet18-f37072fd.pth, the file torchvision keeps in
    # ~/.cache/torch/hub/checkpoints/ (ResNet18_Weights.IMAGENET1K_V1)
    apprentice convert-backbone resnet18-f37072fd.pth --out resnet18.safetensors
    apprentice convert-backbone --torchvision --out resnet18.safetensors

The .pth is read here and nowhere else, with `torch.load(weights_only=True)`: tensors and plain
containers only, no code from the file runs. Training (and every other load path) reads only the
safetensors file. The name of torchvision's file carries the first hex digits of its SHA-256, which
are checked as torch.hub checks them; keys and shapes are checked against the trainer's ResNet-18
(`backbone.torchvision_to_backbone`), and the file written is read back into one before it is kept.
`fc.*` (the ImageNet classifier) and `num_batches_tracked` are left out.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from apprentice.errors import UserError, UserValueError, run_command
from apprentice.learning.backbone import (
    IMAGENET_URL,
    TORCHVISION_WIDTH,
    ResNet18,
    load_torchvision_weights,
    torchvision_to_backbone,
)

PROG = "apprentice convert-backbone"
# torch.hub's file names: <name>-<the first 8 or more hex digits of the SHA-256>.<ext>
_HASH_IN_NAME = re.compile(r".*-([0-9a-f]{8,64})\.[A-Za-z]+")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_name_hash(path: Path, sha256: str) -> None:
    """A file named like torch.hub's (`resnet18-f37072fd.pth`) must have that hash prefix."""
    match = _HASH_IN_NAME.fullmatch(path.name)
    if match and not sha256.startswith(match.group(1)):
        raise UserValueError(
            f"{path}: SHA-256 starts {sha256[: len(match.group(1))]}, its name says "
            f"{match.group(1)}: a damaged or different file (download it again)"
        )


def read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved with torch.save, read with the weights-only unpickler."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        # torch's message is mostly advice on loading unsafely; keep what was wrong
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused:
            why = f"it holds {refused.group(1)}, which only an unsafe load would build"
        elif isinstance(exc, RuntimeError) and str(exc).strip():
            why = str(exc).strip().splitlines()[0]  # e.g. the zip reader's, for a cut file
        else:
            why = "not a torch.save file, or a damaged one"
        raise UserValueError(f"{path}: cannot be read weights-only: {why}") from None
    if not isinstance(state, Mapping):
        raise UserValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserValueError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor")
    return dict(state)


def torchvision_state() -> tuple[dict[str, torch.Tensor], str]:
    """ResNet18_Weights.IMAGENET1K_V1 through torchvision: its hub cache, else a download
    (hash-checked by torch.hub, read weights-only)."""
    try:
        from torchvision.models import ResNet18_Weights
    except ImportError:
        raise UserError(
            f"--torchvision needs torchvision, which is not installed: download {IMAGENET_URL} "
            "and pass the file instead"
        ) from None
    weights = ResNet18_Weights.IMAGENET1K_V1
    state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    return dict(state), weights.url


def backbone_tensors(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The backbone's tensors of a torchvision resnet18 state dict, checked by name and shape
    against the trainer's ResNet-18 (built on the meta device: shapes only, no memory)."""
    with torch.device("meta"):
        reference = ResNet18(TORCHVISION_WIDTH, "frozen_bn")
    kept = torchvision_to_backbone(state, reference, source)
    return {k: v.detach().clone().contiguous() for k, v in kept.items()}  # own storage each


def convert(
    tensors: dict[str, torch.Tensor], out: Path, metadata: dict[str, str], overwrite: bool
) -> None:
    """Writes `tensors` to `out` (via a temporary file) once a ResNet-18 loaded from it holds
    exactly these tensors."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; --overwrite replaces it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    try:
        check = ResNet18(TORCHVISION_WIDTH, "frozen_bn")
        load_torchvision_weights(check, tmp)
        for key, value in check.state_dict().items():
            if not torch.equal(value, tensors[key]):
                raise RuntimeError(f"{tmp}: {key} reads back different from what was written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_convert(a: argparse.Namespace) -> int:
    out = Path(a.out)
    if a.torchvision:
        state, source = torchvision_state()
        metadata = {"source": source}
    else:
        src = Path(a.source)
        sha256 = sha256_file(src)
        check_name_hash(src, sha256)
        state, source = read_pth(src), str(src)
        metadata = {"source": src.name, "source_sha256": sha256}
    tensors = backbone_tensors(state, source)
    convert(tensors, out, {"format": "torchvision.resnet18.backbone", **metadata}, a.overwrite)
    n = sum(v.numel() for v in tensors.values())
    print(
        f"{out}: ResNet-18 backbone, {len(tensors)} tensors ({n:,} values) from {source}; "
        f"train with --backbone-weights {out}"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument(
        "source", nargs="?",
        help=f"torchvision's resnet18-f37072fd.pth ({IMAGENET_URL}), or any torchvision "
             "resnet18 state dict saved with torch.save",
    )  # fmt: skip
    ap.add_argument("--torchvision", action="store_true",
                    help="take ResNet18_Weights.IMAGENET1K_V1 through an installed torchvision "
                         "(its cache, else a download) instead of a file")  # fmt: skip
    ap.add_argument("--out", required=True, help="safetensors file to write")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    if (a.source is None) == (not a.torchvision):
        ap.error("give the .pth file or --torchvision (one of them)")
    return run_command(cmd_convert, a, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
