"""Sweep 24d: correct exports judged on ONE smooth input (`--input`), as a user with one real image runs them.

With `--input` the given input replaces the 8 seeded ones, so every verdict (the outputs' and the layers') rests on
one smooth input. Hunt 17a found a correct GroupNorm export failing at 6.0x that way; its "checked and fine" list
used seeded `--samples 1` normal inputs. This runs `verify export` (a fresh process each, 1 thread, ONNX only, the
default layer verdict) of torchvision architectures given as a user's model (random init, seed 0, 10 classes),
hand-written GroupNorm/LayerNorm models and registered backbones, each on one image-like array
(`verify.inputs.sample_array("image", shape, seed, 0)`) per seed and on one synthesised photo-like PNG (gradients
and blurred shapes), with the dynamo exporter and, on fewer inputs, the legacy one. Per run: the exit code, the
outputs' worst ratio (pair, output, channel) and the worst layer's, against AUTO_FACTOR.

    OMP_NUM_THREADS=1 python bench/smooth_inputs.py [--models resnet18 gn_gelu ...] [--seeds 0 1 2 3] [--size 64]
        [--legacy-inputs image0 photo] [--work /tmp/sweep24d] [--log bench/results/smooth-inputs-cpu.log]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACTORIES = '''
import torch
import torchvision
from torch import nn
import torch.nn.functional as F


def tv(name, **kwargs):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs).eval()


def resnet18():
    return tv("resnet18")


def mobilenet_v3_small():
    return tv("mobilenet_v3_small")


def efficientnet_b0():
    return tv("efficientnet_b0")


def regnet_x_400mf():
    return tv("regnet_x_400mf")


def convnext_tiny():
    return tv("convnext_tiny")


def shufflenet_v2_x0_5():
    return tv("shufflenet_v2_x0_5")


def squeezenet1_0():
    return tv("squeezenet1_0")


def densenet121():
    return tv("densenet121")


def mnasnet0_5():
    return tv("mnasnet0_5")


def vit_small():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=64, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                              num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zeroes it: every output would be exactly 0
    return model.eval()


def swin_t():
    return tv("swin_t")


class GroupNormBlock(nn.Module):
    """A ResNet basic block with GroupNorm (as detection heads and small-batch training use), feature map out."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.gn0 = nn.GroupNorm(32, 64)
        self.conv1 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(32, 64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(32, 64)

    def forward(self, x):
        x = F.relu(self.gn0(self.stem(x)))
        return F.relu(x + self.gn2(self.conv2(F.relu(self.gn1(self.conv1(x))))))


def gn_block():
    torch.manual_seed(0)
    return GroupNormBlock().eval()


class GroupNormGelu(nn.Module):
    """Hunt 17a's model (tests/test_hunt17a.py GROUP_NORM_MODEL): GELU(GroupNorm(8, 64)) after a grouped conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.g = nn.Conv2d(32, 64, 3, padding=1, groups=4)
        self.ln = nn.GroupNorm(8, 64)

    def forward(self, x):
        return F.gelu(self.ln(self.g(F.relu(self.dw(F.relu(self.stem(x)))))))


def gn_gelu():
    torch.manual_seed(0)
    return GroupNormGelu().eval()


class LayerNormGelu(nn.Module):
    """A ConvNeXt-like ending: channels-last LayerNorm over 64 channels, then GELU, a feature map out."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 4, stride=4)
        self.dw = nn.Conv2d(64, 64, 7, padding=3, groups=64)
        self.ln = nn.LayerNorm(64)

    def forward(self, x):
        x = self.dw(self.stem(x)).permute(0, 2, 3, 1)
        return F.gelu(self.ln(x)).permute(0, 3, 1, 2)


def ln_gelu():
    torch.manual_seed(0)
    return LayerNormGelu().eval()
'''
USER_MODELS = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "convnext_tiny",
               "shufflenet_v2_x0_5", "squeezenet1_0", "densenet121", "mnasnet0_5", "vit_small", "gn_block", "gn_gelu",
               "ln_gelu", "swin_t"]
BACKBONES = {"bb_resnet18_frozen": ["-b", "resnet18", "--norm", "frozen"],
             "bb_resnet18_batch": ["-b", "resnet18", "--norm", "batch"],
             "bb_mobilenet_v3_small": ["-b", "mobilenet_v3_small"]}
TIMEOUT = 300


def photo(path: Path, size: int) -> None:
    """A photo-like RGB PNG: a sky-to-ground gradient, a vignette, blurred discs and a blurred bar (smooth, 8-bit)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    side = size * 3 // 2
    y, x = np.mgrid[0:side, 0:side] / (side - 1)
    sky = np.stack([0.35 + 0.3 * y, 0.55 + 0.2 * y, 0.9 - 0.5 * y], axis=-1)
    vignette = 1 - 0.35 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    image = Image.fromarray((np.clip(sky * vignette[..., None], 0, 1) * 255).astype(np.uint8))
    shapes = Image.new("RGB", (side, side))
    mask = Image.new("L", (side, side))
    draw, drawn = ImageDraw.Draw(shapes), ImageDraw.Draw(mask)
    for (cx, cy, r, colour) in [(0.3, 0.6, 0.18, (200, 120, 40)), (0.7, 0.35, 0.12, (240, 230, 210)),
                                (0.62, 0.75, 0.2, (60, 110, 50))]:
        box = [(cx - r) * side, (cy - r) * side, (cx + r) * side, (cy + r) * side]
        draw.ellipse(box, fill=colour)
        drawn.ellipse(box, fill=255)
    draw.rectangle([0.1 * side, 0.15 * side, 0.45 * side, 0.22 * side], fill=(90, 60, 40))
    drawn.rectangle([0.1 * side, 0.15 * side, 0.45 * side, 0.22 * side], fill=255)
    blurred = shapes.filter(ImageFilter.GaussianBlur(side / 40))
    image.paste(blurred, mask=mask.filter(ImageFilter.GaussianBlur(side / 25)))
    image.save(path)


def worst(data: dict) -> dict:
    """The outputs' worst (ratio, pair, where) and the layer verdict's worst (ratio, file, layer) of a --json."""
    outs = [(o.get("ratio") or 0.0, f"{pair['a']} vs {pair['b']}", o.get("where") or o["name"])
            for pair in data.get("pairs", []) for o in pair.get("outputs", [])]
    layers = [(layer.get("ratio") or 0.0, Path(check.get("candidate") or "?").name,
               f"{layer['module']}" + (f"[c={layer['channel']}]" if layer.get("channel") is not None else ""))
              for check in data.get("layers") or [] for layer in check.get("layers", [])]
    return {"out": max(outs, default=(0.0, "-", "-")), "layer": max(layers, default=(0.0, "-", "-"))}


def run(name: str, args: list[str], inp: Path, shape: str, exporter: str, work: Path) -> dict:
    label = f"{name}-{inp.stem}-{exporter}"
    report = work / "json" / f"{label}.json"
    report.unlink(missing_ok=True)
    command = [str(Path(sys.executable).with_name("verify")), "export", *args, "--input", str(inp), "--shape", shape,
               "--static", "--format", "onnx", "--onnx-exporter", exporter, "--no-cache", "--overwrite",
               "--out", str(work / "out"), "--json", str(report)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        code, tail = done.returncode, (done.stdout + done.stderr).strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        code, tail = "timeout", []
    seconds = time.perf_counter() - start
    if report.exists():
        return {"code": code, "seconds": seconds, **worst(json.loads(report.read_text())), "tail": None}
    return {"code": code, "seconds": seconds, "tail": tail[0][:160] if tail else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=USER_MODELS + list(BACKBONES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--legacy-inputs", nargs="*", default=["image0", "photo"],
                        help="inputs also run with the legacy (torchscript) ONNX exporter")
    parser.add_argument("--work", type=Path, default=Path("/tmp/sweep24d"))
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    import numpy as np
    import torch

    from verify.inputs import sample_array
    from verify.judge.compare import AUTO_FACTOR

    work = args.work.resolve()
    (work / "json").mkdir(parents=True, exist_ok=True)
    (work / "models.py").write_text(FACTORIES, encoding="utf-8")
    shape = f"1x3x{args.size}x{args.size}"
    inputs = []
    for seed in args.seeds:
        inputs.append(work / f"image{seed}.npy")
        np.save(inputs[-1], sample_array("image", (1, 3, args.size, args.size), seed, 0))
    inputs.append(work / "photo.png")
    photo(inputs[-1], args.size)
    log = open(args.log, "a", encoding="utf-8") if args.log else None

    def say(text: str) -> None:
        print(text, flush=True)
        if log:
            print(text, file=log, flush=True)

    say(f"# bench/smooth_inputs.py {' '.join(sys.argv[1:])} (torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC, 1 thread per process, {shape}, ONNX only, --static, layer verdict "
        f"by default; AUTO_FACTOR {AUTO_FACTOR} from verify/judge/compare.py; near = above 0.8 x AUTO_FACTOR)")
    near = 0.8 * AUTO_FACTOR
    counts = {"runs": 0, "fail": 0, "near": 0, "error": 0}
    for name in args.models:
        cli = BACKBONES.get(name) or ["--model", f"{work / 'models.py'}:{name}"]
        for inp in inputs:
            for exporter in ["dynamo"] + (["torchscript"] if inp.stem in args.legacy_inputs else []):
                result = run(name, cli, inp, shape, exporter, work)
                counts["runs"] += 1
                if result["tail"] is not None or result["code"] not in (0, 1):
                    counts["error"] += 1
                    say(f"{name} {inp.name} {exporter}: exit {result['code']} ({result['seconds']:.0f} s) "
                        f"{result['tail']}")
                    continue
                ratio, pair, where = result["out"]
                lratio, lfile, layer = result["layer"]
                flag = "FAIL" if result["code"] == 1 else ("near" if max(ratio, lratio) > near else "ok")
                counts["fail" if flag == "FAIL" else "near"] += flag != "ok"
                say(f"{flag:4} {name} {inp.name} {exporter}: exit {result['code']}, outputs {ratio:.2f}x ({pair} "
                    f"{where}), worst layer {lratio:.2f}x ({lfile} {layer}), {result['seconds']:.0f} s")
    say(f"# {counts['runs']} runs: {counts['fail']} exit 1, {counts['near']} more above {near:g}x, "
        f"{counts['error']} without a verdict")


if __name__ == "__main__":
    main()
