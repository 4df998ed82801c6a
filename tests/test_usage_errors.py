"""A name chosen from a list, misspelt, is a usage error in every tool: one line, the close names,
exit code 2 (core.registry.UnknownNameError and core.cli's convention), whichever layer finds it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("args, suggestion", [
    (["gen-synth", "--dataset", "cubb", "--out", "{tmp}/a"], "did you mean cub"),
    (["gen-synth", "--gan", "bigbigann", "--latents", "prior", "--out", "{tmp}/b"], "did you mean bigbigan"),
    (["find-direction", "optimize", "--gan", "toyy", "--out", "{tmp}/c"], "did you mean toy"),
    (["eval-seg", "--dataset", "ecsd", "--pred-dir", "{tmp}", "--out", "{tmp}/d"], "did you mean ecssd"),
    (["gen-synth", "--mask-rule", "lightnig", "--out", "{tmp}/e"], "did you mean lighting"),
    ([sys.executable, "-m", "experiments", "run", "tabel2-ebigbigan", "--dry-run"], "did you mean table2-ebigbigan"),
    (["segment", "--model", "{repo}/models/dcgan-faces.onnx", "{tmp}", "--out", "{tmp}/f", "--protocol", "shrt"],
     "did you mean short"),
])
def test_a_misspelt_name_is_one_line_with_the_close_ones_and_exit_2(args, suggestion, tmp_path):
    cmd = [a.format(tmp=tmp_path, repo=Path(__file__).resolve().parents[1]) for a in args]
    if not Path(cmd[0]).is_absolute():
        cmd[0] = str(BIN / cmd[0])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: ") and suggestion in lines[0], lines
