"""--seed is refused where it draws nothing (hunt 12a's report: with --weights other than synthetic and --input, a
registered model's run ignored it silently)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.errors import UsageError
from verify.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize("backbone", ["resnet18", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_seed_with_other_weights_and_an_input_is_refused(tmp_path, backbone):
    """Before: `-b resnet18 --weights imagenet --input x.npy --seed 3` went on to the weights (the seed unused);
    now a usage error before any work, naming --seed."""
    given = tmp_path / "x.npy"
    np.save(given, np.full((1, 3, 64, 64), 0.5, np.float32))
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


def test_compare_refuses_a_seed_that_draws_nothing(tmp_path):
    """Before (review of hunt 13a): `compare a.pt2 b.pt2 --input x.npy --seed 4` agreed, exit 0, the seed recorded:
    two files carry their own weights and --input gives the inputs."""
    given = tmp_path / "x.npy"
    np.save(given, np.full((1, 3, 32, 32), 0.5, np.float32))
    files = []
    for name in ("a", "b"):
        files.append(tmp_path / f"{name}.pt2")
        files[-1].write_bytes(b"not read: refused first")
    for command in ("compare", "explain"):
        result = runner.invoke(app, [command, *map(str, files), "--input", str(given), "--seed", "4"])
        assert result.exit_code == 2, result.output
        assert "drop --seed 4" in result.output


def test_compare_keeps_a_seed_that_draws_a_side(tmp_path):
    from verify.cli.commands import refuse_unused_seed_for
    from verify.settings import RunSettings

    given = tmp_path / "x.npy"
    np.save(given, np.full((1, 3, 32, 32), 0.5, np.float32))
    file = tmp_path / "a.pt2"
    file.write_bytes(b"not read")
    seeded = RunSettings(seed=4, input_file=given)
    refuse_unused_seed_for(seeded, ["resnet18:frozen:body", str(file)])  # synthetic weights drawn from it
    refuse_unused_seed_for(RunSettings(seed=4), [str(file), str(file)])  # no --input: the inputs are drawn
    with pytest.raises(UsageError, match="drop --seed"):
        refuse_unused_seed_for(seeded, [str(file), str(file)])


def test_the_matrix_refuses_a_seed_no_cell_draws_from(tmp_path):
    """Before (left open at stops 29 and 30): `verify matrix -b resnet18 --weights imagenet --input x.npy --seed 3`
    went on with the seed unused. A fpn view (its FPN drawn from the seed) or a user's model keeps it."""
    from verify.matrix.request import MatrixRequest
    from verify.settings import RunSettings

    given = tmp_path / "x.npy"
    np.save(given, np.full((1, 3, 32, 32), 0.5, np.float32))
    result = runner.invoke(app, ["matrix", "-b", "resnet18", "--weights", "imagenet", "--input", str(given),
                                 "--seed", "3", "--json", str(tmp_path / "matrix.json")])
    assert result.exit_code == 2, result.output
    assert "--seed 3" in result.output and "drop --seed" in result.output
    assert not (tmp_path / "matrix.json").exists()
    seeded = RunSettings(seed=3, weights="imagenet", input_file=given)
    MatrixRequest.create(["resnet18"], views=["fpn"], settings=seeded)
    MatrixRequest.create(["resnet18"], settings=RunSettings(seed=3, weights="imagenet"))  # the inputs drawn from it
