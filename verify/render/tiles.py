"""What every rendering of a matrix shows in one cell x pair: a tile (verdict mark, ratio, level)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from verify.render.rows import format_ratio

if TYPE_CHECKING:
    from verify.matrix import CellResult, MatrixResult

PASS_MARK, FAIL_MARK, ERROR_MARK, NONE_MARK = "✓", "✗", "!", "·"


@dataclass(frozen=True)
class Tile:
    """One cell x pair of the matrix: what every rendering shows there."""

    present: bool
    passed: bool = False
    ratio: float | None = None
    """The worst output's ratio to the float32 noise floor."""
    output: str = ""
    """The pair's worst output."""
    level: str = "none"
    """ok (within half the allowance), near (within it), fail, error or none (no such pair)."""

    @property
    def mark(self) -> str:
        if self.level == "error":
            return ERROR_MARK
        if not self.present:
            return NONE_MARK
        return PASS_MARK if self.passed else FAIL_MARK

    @property
    def ratio_text(self) -> str:
        return format_ratio(self.ratio) if self.present and self.ratio is not None else ""

    @property
    def text(self) -> str:
        """Verdict symbol and the ratio, e.g. `✓ 1.5`."""
        return f"{self.mark} {self.ratio_text}".strip()


def tiles(result: MatrixResult, cell: CellResult) -> dict[str, Tile]:
    """Pair name -> tile, for every column of the matrix."""
    from verify.matrix import pair_name

    factor = result.factor
    found = {}
    for pair in cell.pair_results():
        worst = pair.worst if pair.outputs else None
        ratio = worst.ratio if worst is not None else None
        if not pair.passed:
            level = "fail"
        elif ratio is not None and ratio > factor / 2:
            level = "near"
        else:
            level = "ok"
        found[pair_name(pair)] = Tile(True, pair.passed, ratio, worst.name if worst else "", level)
    if cell.error:
        return {name: Tile(False, level="error") for name in result.pair_columns()}
    return {name: found.get(name, Tile(False)) for name in result.pair_columns()}
