"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["out"].loss.ndim == 0 and namespace["loss"].item() > 0


def test_readme_names_the_ci_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "./dev.sh test" in ci and "./dev.sh test" in README.read_text()


def test_views_doc_example_runs_as_written():
    doc = README.parent / "docs" / "views.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/views.md should hold one python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(doc), "exec"), namespace)
    images = namespace["images"]
    assert namespace["views1"] is namespace["views2"]
    assert namespace["v1"].shape == namespace["v2"].shape == (images.shape[0], 3, 32, 32)
    assert namespace["one"].blur_p == 0.5
