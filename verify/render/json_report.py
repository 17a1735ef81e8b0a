"""The matrix result as JSON: the form `verify matrix merge` reads back."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from verify.matrix import MatrixResult


def json_text(result: MatrixResult) -> str:
    return json.dumps(result.to_dict(), indent=2, default=str) + "\n"
