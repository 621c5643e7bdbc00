"""The README's "Python API" example runs as written and shows what it says."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_api_example_runs():
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    out = scope["out"]
    assert tuple(out.images.shape) == (4, 3, 32, 32)
    assert out.trajectory.num_trained_steps == 4 and out.nfe == 25
