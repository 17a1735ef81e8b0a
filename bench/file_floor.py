"""Guard 3's calibration (verify/judge/file_floor.py): for correct user models of many kinds, exported to
torch.export and TorchScript, the largest ratio of the model's float32 floor to the file's own, over outputs,
channels and inputs; FLOOR_AGREEMENT must stay above all of them (and below the injected noise's). Each model runs
through `verify export --model` as a user would (the guard runs for user models only). Run by hand:

    python bench/file_floor.py --log bench/results/file-floor-cpu.log
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = '''
import torch
import torchvision
from torch import nn


def _eval(model):
    torch.manual_seed(0)
    for module in model.modules():  # non-trivial batch statistics, as trained weights have
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _seeded(build, **kwargs):
    torch.manual_seed(0)
    return _eval(build(**kwargs))


def resnet18():
    return _seeded(torchvision.models.resnet18)


def resnet18_frozen():
    return _seeded(torchvision.models.resnet18, norm_layer=torchvision.ops.FrozenBatchNorm2d)


def mobilenet_v3_small():
    return _seeded(torchvision.models.mobilenet_v3_small)


def efficientnet_b0():
    return _seeded(torchvision.models.efficientnet_b0)


def regnet_x_400mf():
    return _seeded(torchvision.models.regnet_x_400mf)


def shufflenet():
    return _seeded(torchvision.models.shufflenet_v2_x0_5)


def squeezenet():
    return _seeded(torchvision.models.squeezenet1_1)


def convnext_tiny():
    return _seeded(torchvision.models.convnext_tiny)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 64, 8, stride=8)
        self.body = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, dropout=0.0), 2)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.body(tokens)


def encoder():
    torch.manual_seed(0)
    return Encoder().eval()
'''

KINDS = ("resnet18", "resnet18_frozen", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "shufflenet",
         "squeezenet", "convnext_tiny", "encoder")


def worst_ratios(report: dict) -> dict[str, float]:
    """Per file: the largest model/file floor ratio, from the trust evidence the report keeps."""
    from verify.judge.file_floor import agreement_ratio, floors_from_record

    model, *files = floors_from_record(report["trust"]["files"])
    return {file.label: max(agreement_ratio(ours[name], theirs[name])
                            for ours, theirs in zip(model.floors, file.floors) for name in set(ours) & set(theirs))
            for file in files}


def main() -> None:
    from verify.judge.file_floor import FLOOR_AGREEMENT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1x3x96x96")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    lines = [f"# model floor / file's own floor (worst over outputs, channels, inputs); FLOOR_AGREEMENT "
             f"{FLOOR_AGREEMENT:g}; shape {args.shape}"]
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "models.py"
        source.write_text(MODELS)
        for kind in args.kinds:
            for seed in range(args.seeds):
                out = Path(tmp) / f"{kind}-{seed}"
                start = time.perf_counter()
                for formats in (["--format", "pt2", "--format", "torchscript", "--trace"], ["--format", "pt2"],
                                ["--format", "pt2", "--static"]):
                    done = subprocess.run([sys.executable, "-m", "verify.cli", "export", "--model",
                                           f"{source}:{kind}", "--shape", args.shape, "--seed", str(seed), *formats,
                                           "--out", str(out), "--json", str(out) + ".json", "--timeout", "900"],
                                          capture_output=True, text=True)
                    if done.returncode != 2:  # 2: not traceable (torch.export alone then) or not dynamic (static)
                        break
                if not Path(str(out) + ".json").exists():
                    lines.append(f"{kind} seed {seed}: no report (exit {done.returncode}): "
                                 f"{done.stdout.strip().splitlines()[-1:]}{done.stderr.strip().splitlines()[-1:]}")
                    print(lines[-1], flush=True)
                    continue
                report = json.loads(Path(str(out) + ".json").read_text())
                ratios = worst_ratios(report)
                worst = max(worst, *ratios.values())
                lines.append(f"{kind} seed {seed}: exit {done.returncode}, " + ", ".join(
                    f"{label} {ratio:.3f}" for label, ratio in ratios.items())
                    + f" ({time.perf_counter() - start:.0f}s)")
                print(lines[-1], flush=True)
    lines.append(f"worst {worst:.3f} (FLOOR_AGREEMENT {FLOOR_AGREEMENT:g})")
    print(lines[-1])
    if args.log:
        args.log.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
