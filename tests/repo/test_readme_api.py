"""The "Python API" example (docs/python-api.md) runs as written and shows what it says."""

import re

from repo_paths import ROOT

PAGE = ROOT / "docs" / "python-api.md"


def test_python_api_example_runs():
    section = PAGE.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(PAGE), "exec"), scope)
    out = scope["out"]
    assert tuple(out.images.shape) == (4, 3, 32, 32)
    assert out.trajectory.num_trained_steps == 4 and out.nfe == 25
