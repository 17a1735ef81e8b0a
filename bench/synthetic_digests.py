"""Write exporter/synthetic_digests.json: the sha256 of every registered backbone's synthetic weights, computed here.

    python bench/synthetic_digests.py [--seeds 0] [--check]

A copy of synthetic weights in the cache is used only when its tensors hash to this table's entry
(exporter/weights.py), so the table is what makes a copy proof rather than trust. Run it after a change to the
weights' generator or a torch upgrade that changes them (tests/test_speed31.py fails until the table matches a fresh
computation); a torch whose weights differ from the table computes them every time and keeps no copy. `--check`
compares without writing (exit 1 on a difference). About 10 s a backbone on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.backbones import list_backbones  # noqa: E402
from exporter.weights import DIGESTS_SCHEMA, SYNTHETIC_DIGESTS, _computed_state_dict, state_dict_sha256  # noqa: E402


def table(seeds: list[int]) -> dict:
    import torch

    weights: dict[str, dict[str, dict]] = {}
    for backbone in list_backbones():
        for seed in seeds:
            begin = time.perf_counter()
            state = _computed_state_dict(backbone, seed)
            weights.setdefault(backbone, {})[str(seed)] = {
                "sha256": state_dict_sha256(state),
                "bytes": sum(t.numel() * t.element_size() for t in state.values())}
            print(f"{backbone} seed {seed}: {time.perf_counter() - begin:.1f} s", file=sys.stderr)
    return {"schema": DIGESTS_SCHEMA,
            "about": "sha256 (exporter.weights.state_dict_sha256) and tensor bytes of the synthetic weights per "
                     "backbone and seed; written by `python bench/synthetic_digests.py`",
            "torch": torch.__version__, "weights": weights}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="[default: 0]")
    parser.add_argument("--check", action="store_true", help="Compare with the committed table, write nothing")
    args = parser.parse_args()
    made = table(args.seeds)
    if args.check:
        committed = json.loads(SYNTHETIC_DIGESTS.read_text())["weights"]
        differ = [f"{b}:{s}" for b, seeds in made["weights"].items() for s, e in seeds.items()
                  if committed.get(b, {}).get(s) != e]
        print(f"differs from {SYNTHETIC_DIGESTS.name}: {', '.join(differ)}" if differ else "the table matches")
        return 1 if differ else 0
    SYNTHETIC_DIGESTS.write_text(json.dumps(made, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SYNTHETIC_DIGESTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
