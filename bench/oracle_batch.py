"""The float64 oracle's runs: one batch of the feeds against one run per feed, by model and input size.

Run by hand (a minute on one core); prints a table and appends it to the log:

    python bench/oracle_batch.py [--threads 1] [--feeds 8] [--log bench/results/oracle-batch-cpu.log]

Each model is built with synthetic weights, cast to float64 and warmed up once; then the feeds (random, the
oracle's shape) run as one batch and one by one, inference mode, best of --rounds. The ratio is per-feed time
over batch time (above 1: the batch is faster). `verify.judge.oracle.BATCH_MAX_ELEMENTS` is read from these
figures. A benchmark, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOG = ROOT / "bench" / "results" / "oracle-batch-cpu.log"
MODELS = ("resnet18:frozen:body", "resnet50:frozen:body", "mobilenet_v3_large:batch:body")
SIZES = (32, 64, 112, 160, 224)


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    import torch

    from exporter.spec import ModelSpec
    from verify.judge.oracle import BATCH_MAX_ELEMENTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--feeds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"=== {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
             f"{args.threads} thread(s), {args.feeds} feeds, best of {args.rounds}; BATCH_MAX_ELEMENTS = "
             f"{BATCH_MAX_ELEMENTS}",
             f"{'model':32} {'px':>4} {'elements':>9} {'batch s':>8} {'one by one s':>12} {'ratio':>6}  oracle runs"]
    print(lines[0], "\n" + lines[1], flush=True)
    for text in MODELS:
        spec = ModelSpec.parse(text)
        model = spec.build(0, None, "synthetic").model.double().eval()
        for size in SIZES:
            x = torch.randn(args.feeds, 3, size, size, dtype=torch.float64)
            with torch.inference_mode():
                model(x[:1])
                batch = best(lambda m=model, x=x: m(x), args.rounds)
                single = best(lambda m=model, x=x: [m(x[i:i + 1]) for i in range(len(x))], args.rounds)
            chosen = "batch" if x.numel() <= BATCH_MAX_ELEMENTS else "one by one"
            line = f"{text:32} {size:>4} {x.numel():>9} {batch:>8.3f} {single:>12.3f} {single / batch:>6.2f}  {chosen}"
            lines.append(line)
            print(line, flush=True)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a") as log:
        log.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
