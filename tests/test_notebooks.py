"""The notebooks run as shipped: their code cells, in order, in a fresh interpreter."""

import json
import subprocess
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


def test_quickstart_notebook_trains_tests_and_recommends(tmp_path):
    cells = json.loads((NOTEBOOKS / "quickstart.ipynb").read_text())["cells"]
    script = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test/NDCG@10" in done.stdout
    recommendation_lines = [line for line in done.stdout.splitlines() if line.rstrip().endswith("]")]
    assert len(recommendation_lines) >= 5  # "<user id> [10 item ids]" for five users
    assert all(len(line.split("[")[1].split(",")) == 10 for line in recommendation_lines[-5:])
