"""--seed is refused where it draws nothing (hunt 12a's report: with --weights other than synthetic and --input, a
registered model's run ignored it silently)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from verify.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize("backbone", ["resnet18", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_seed_with_other_weights_and_an_input_is_refused(tmp_path, backbone):
    """Before: `-b resnet18 --weights imagenet --input x.npy --seed 3` went on to the weights (the seed unused);
    now a usage error before any work, naming --seed."""
    given = tmp_path / "x.npy"
    np.save(given, np.zeros((1, 3, 64, 64), np.float32))
    result = runner.invoke(app, ["export", "-b", backbone, "--weights", "imagenet", "--input", str(given),
                                 "--seed", "3", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "drop --seed" in result.output
    assert not (tmp_path / "out").exists()


def test_seed_is_kept_where_it_draws_something(tmp_path):
    """Synthetic weights, or no --input: the seed draws them; the usual path, not refused."""
    from verify.settings import refuse_unused_seed

    refuse_unused_seed(3, "synthetic", tmp_path / "x.npy")
    refuse_unused_seed(3, "imagenet", None)
    refuse_unused_seed(3, "imagenet", tmp_path / "x.npy", registered=False)  # a user's factory runs after it
    refuse_unused_seed(0, "imagenet", tmp_path / "x.npy")
