"""Running the real ``promtool`` (Debian package ``prometheus``) from tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .._servers import require_binary

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parents[2] / "examples" / "slo"


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS``; the result carries its exit status and output."""
    binary = require_binary("promtool", "prometheus")
    return subprocess.run([binary, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def assert_passes(result: subprocess.CompletedProcess[str]) -> None:
    """Fail with promtool's own report unless it exited 0."""
    assert result.returncode == 0, f"promtool failed:\n{result.stdout}\n{result.stderr}"
