"""``contrastkit report`` warns where it is read: an unfinished run in the header, and what could not be
drawn in a box at the top of the page and as WARNING lines on the terminal."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from contrastkit.cli import main
from contrastkit.reporting import write_report
from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint

SMALL = dict(device="cpu", map_points=40, queries=2, neighbours=2)


class Top(HTMLParser):
    """The subtitle, the warnings box (its text and position) and where the first section starts."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []
        self.subtitle = ""
        self.warnings: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "p" and a.get("class") == "sub":
            self._in = "sub"
        elif tag == "div" and a.get("class") == "warnings":
            self.order.append("warnings")
            self._in = "warnings"
        elif tag == "section":
            self.order.append(f"section:{a.get('id')}")
        elif tag == "nav":
            self.order.append("nav")

    def handle_endtag(self, tag: str) -> None:
        if (tag == "p" and self._in == "sub") or (tag == "div" and self._in == "warnings"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "sub":
            self.subtitle += data
        elif self._in == "warnings":
            self.warnings.append(data)


def top(path: Path) -> Top:
    page = Top()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def interrupt(run: Path, step: int = 73, total: int = 630) -> None:
    state = load_checkpoint(run / "checkpoint.pt")
    state = {k: v for k, v in state.items() if k not in ("format", "version")}
    state.update(finished=False, step=step)
    state["progress"] = {**state["progress"], "total_steps": total}
    save_checkpoint(state, run / "checkpoint.pt")


def test_unfinished_run_is_named_in_the_header_the_warnings_and_the_terminal(run_copy: Path) -> None:
    interrupt(run_copy)
    printed = io.StringIO()
    result = write_report(run_copy, out=printed, **SMALL)
    page = top(result.html)
    assert "epochs=2 (unfinished: step 73 of 630)" in page.subtitle
    assert page.order[0] == "warnings" and "unfinished: step 73 of 630" in " ".join(page.warnings)
    assert any("unfinished: step 73 of 630" in n for n in result.notes)
    assert "contrastkit report: WARNING: unfinished: step 73 of 630" in printed.getvalue()
    assert f"continue it with contrastkit train --resume {run_copy} and report again" in printed.getvalue()
    assert "1 warning(s)" in printed.getvalue().splitlines()[-1]


def test_finished_run_has_no_warnings_box(run_copy: Path) -> None:
    printed = io.StringIO()
    result = write_report(run_copy, out=printed, **SMALL)
    assert result.notes == [] and "warnings" not in top(result.html).order
    assert "WARNING" not in printed.getvalue() and "unfinished" not in top(result.html).subtitle


@pytest.mark.parametrize("damage", ["corrupt checkpoint", "data deleted"])
def test_what_could_not_be_drawn_is_a_warning_first_on_the_page_and_on_the_terminal(
    run_copy: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if damage == "corrupt checkpoint":
        (run_copy / "checkpoint.pt").write_bytes(b"cut off mid-write")
        words = "cannot be read"
    else:  # a run on a folder data set that was deleted since
        data = tmp_path / "gone"
        state = load_checkpoint(run_copy / "checkpoint.pt")
        state = {k: v for k, v in state.items() if k not in ("format", "version")}
        state["config"] = {**state["config"], "data": str(data)}
        save_checkpoint(state, run_copy / "checkpoint.pt")
        words = "gone"
    assert main(["report", str(run_copy), "--device", "cpu", "--map-points", "40", "--queries", "2"]) == 0
    out = capsys.readouterr().out
    warning_lines = [line for line in out.splitlines() if line.startswith("contrastkit report: WARNING:")]
    assert len(warning_lines) == 1 and "not drawn" in warning_lines[0] and words in warning_lines[0]
    assert out.splitlines()[-1].endswith("1 warning(s), shown above and at the top of the page")
    page = top(run_copy / "report.html")
    assert page.order[0] == "warnings" and page.order.index("warnings") < page.order.index("nav")
    assert "not drawn" in " ".join(page.warnings) and words in " ".join(page.warnings)


def test_metrics_of_a_text_run_interrupted_without_a_checkpoint_are_flagged(tmp_path: Path) -> None:
    run = tmp_path / "text"
    run.mkdir()
    (run / "metrics.json").write_text(
        '{"finished": false, "steps": 12, "total_steps": 5000, "loss_curve": []}'
    )
    result = write_report(run, out=io.StringIO(), **SMALL)
    assert "unfinished: step 12 of 5000" in top(result.html).subtitle
    assert any("unfinished: step 12 of 5000" in n for n in result.notes)
    assert not any("--resume" in n for n in result.notes)  # no checkpoint: nothing to resume


def test_report_refuses_a_cuda_device_that_is_not_there(
    run_copy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """eval and embed refused it; report drew its page without the feature figures and exited 0."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (run_copy / "report.html").unlink(missing_ok=True)  # another test may have reported on the shared run
    assert main(["report", str(run_copy), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda was asked for, but no CUDA device is available; use --device cpu" in err
    assert not (run_copy / "report.html").exists()
