"""export, embed, eval and report: an output location that cannot be written is refused before the work,
a diverged checkpoint is not evaluated, report's numeric flags are checked, the run's own warnings are in
the page's warning box, and other commands' runs are refused with a clear message."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest
import torch

from contrastkit.cli import main
from contrastkit.embed import embed_run
from contrastkit.errors import ConfigError, ContrastkitError
from contrastkit.export import export_backbone
from contrastkit.reporting import report as report_module
from contrastkit.reporting import write_report
from contrastkit.training import checkpoint as ckpt
from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint
from contrastkit.training.evaluate import evaluate_checkpoint


def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the run's model is loaded: the refusal must come before the work."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the work started before the output location was checked")

    import contrastkit.reporting.run as run_module

    monkeypatch.setattr(run_module, "load_trained_run", boom)
    monkeypatch.setattr(ckpt, "load_checkpoint", boom)
    import contrastkit.training.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "load_checkpoint", boom)


def unwritable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    real = os.access
    monkeypatch.setattr(
        ckpt.os, "access", lambda p, mode, **kw: False if Path(p) == folder else real(p, mode, **kw)
    )


def test_eval_refuses_a_checkpoint_with_nan_weights(run_copy: Path) -> None:
    state = load_checkpoint(run_copy / "checkpoint.pt")
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    save_checkpoint(
        {k: v for k, v in state.items() if k not in ("format", "version")}, run_copy / "checkpoint.pt"
    )
    before = (run_copy / "metrics.json").read_text()
    with pytest.raises(ContrastkitError, match="non-finite values") as info:
        evaluate_checkpoint(run_copy, device="cpu", out=io.StringIO())
    assert name in str(info.value)
    assert (run_copy / "metrics.json").read_text() == before  # nothing merged


def test_cli_eval_of_nan_checkpoint_exits_2(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = load_checkpoint(run_copy / "checkpoint.pt")
    for v in state["model"].values():
        if v.is_floating_point():
            v.fill_(float("inf"))
    save_checkpoint(
        {k: v for k, v in state.items() if k not in ("format", "version")}, run_copy / "checkpoint.pt"
    )
    assert main(["eval", str(run_copy), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "Traceback" not in err


def test_eval_into_an_unwritable_run_is_refused_before_the_work(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unwritable(monkeypatch, run_copy)
    no_work(monkeypatch)
    # eval has no --out: the advice is the copy, not "another location"
    with pytest.raises(ContrastkitError, match=r"is not writable.*copy the run folder somewhere writable"):
        evaluate_checkpoint(run_copy, device="cpu", out=io.StringIO())


def test_export_embed_into_unwritable_folder_are_refused_before_the_work(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    unwritable(monkeypatch, ro)
    no_work(monkeypatch)
    with pytest.raises(ContrastkitError, match="is not writable"):
        export_backbone(trained_run, ro / "x.safetensors", out=io.StringIO())
    for suffix in (".npz", ".npy", ".parquet"):
        with pytest.raises(ContrastkitError, match="is not writable"):
            embed_run(trained_run, ro / f"x{suffix}", device="cpu", out=io.StringIO())


def test_embed_into_a_file_says_it_is_a_file(trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ContrastkitError, match="is a file, not a folder"):
        embed_run(trained_run, tmp_path / "afile" / "sub.npz", device="cpu", out=io.StringIO())
    with pytest.raises(ContrastkitError, match="is a file, not a folder"):
        export_backbone(trained_run, tmp_path / "afile" / "x.safetensors", out=io.StringIO())


def test_read_only_file_system_during_export_is_one_line_exit_2(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def erofs(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(ckpt.tempfile, "mkstemp", erofs)
    assert main(["export", str(trained_run), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "x.safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()


def test_exported_file_has_the_umask_permissions(trained_run: Path, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = export_backbone(trained_run, tmp_path / "x.safetensors", out=io.StringIO())
        written = embed_run(trained_run, tmp_path / "e.npz", device="cpu", out=io.StringIO())
    finally:
        os.umask(old)
    assert written.embeddings.shape[0] > 0
    for p in (target, target.with_name(target.name + ".json"), tmp_path / "e.npz"):
        assert p.stat().st_mode & 0o777 == 0o644, p


def test_report_into_an_unwritable_run_is_refused_before_the_work(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unwritable(monkeypatch, run_copy)
    monkeypatch.setattr(report_module, "read_history", lambda *a: pytest.fail("work started"))
    with pytest.raises(ContrastkitError, match=r"is not writable.*copy the run folder somewhere writable"):
        write_report(run_copy, device="cpu", out=io.StringIO())


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--seed", "-1"], "--seed must be an integer from 0"),
        (["--seed", str(2**40)], "--seed must be an integer from 0"),
        (["--queries", "100000"], "--queries 100000 is too large"),
        (["--neighbours", "100000"], "--neighbours 100000 is too large"),
        (["--queries", "0"], "--queries must be a positive integer"),
    ],
)
def test_report_numeric_flags_are_checked(
    trained_run: Path, flags: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(trained_run), "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_report_notes_clamped_queries_and_neighbours(run_copy: Path) -> None:
    result = write_report(
        run_copy, device="cpu", limit=20, map_points=5, pool=4, queries=64, neighbours=8, out=io.StringIO()
    )
    text = " ".join(result.notes)
    assert "--queries 64 is more than the" in text and "--neighbours 8 is more than the 4 training" in text
    page = result.html.read_text()
    assert "--queries 64 is more than the" in page[: page.index("<nav>")]


def test_report_shows_the_runs_own_warnings_in_the_box(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = json.loads((run_copy / "metrics.json").read_text())
    metrics["warnings"] = ["skipped 3 non-finite steps (--skip-nonfinite)", "'x' has a single class"]
    (run_copy / "metrics.json").write_text(json.dumps(metrics))

    def no_figures(*args: object) -> None:
        raise ContrastkitError("skipped in this test")

    monkeypatch.setattr(report_module, "_load_model_and_data", no_figures)
    out = io.StringIO()
    result = write_report(run_copy, device="cpu", out=out)
    page = result.html.read_text()
    box = page[page.index('id="warnings"') : page.index("</div>", page.index('id="warnings"'))]
    assert "skipped 3 non-finite steps (--skip-nonfinite)" in box and "has a single class" in box
    assert "WARNING: the run recorded: skipped 3 non-finite steps" in out.getvalue()


@pytest.mark.parametrize(
    "metrics, kind",
    [
        ({"sts_spearman_before": 10.0, "sts_spearman_after": 20.0}, "text"),
        ({"heads_test": [], "pseudo_labels_train": {}}, "sela"),
        ({"mfcc": {"knn_top1": 0.5}}, "audio"),
    ],
)
def test_report_refuses_other_commands_runs(
    tmp_path: Path, metrics: dict, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ContrastkitError, match="`contrastkit report` supports image runs"):
        write_report(run, device="cpu", out=io.StringIO())
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"is a{'n' if kind == 'audio' else ''} {kind} run" in err and "history.jsonl" not in err
    assert not (run / "report.html").exists()


def test_config_error_type_kept_for_bad_suffix(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        embed_run(trained_run, tmp_path / "x.txt", device="cpu", out=io.StringIO())


def test_loss_against_wall_clock_has_one_point_per_read_out() -> None:
    """The steps read out together share one timestamp: the wall-clock panel plots each timestamp once, at
    the mean of its finite losses (a skipped step's NaN left out), in time order."""
    from contrastkit.reporting.figures import loss_by_time, plot_loss

    rows = [
        {"step": 1, "loss": 4.0, "seconds": 1.5},
        {"step": 2, "loss": 3.0, "seconds": 1.5},
        {"step": 3, "loss": float("nan"), "seconds": 3.0},
        {"step": 4, "loss": 2.0, "seconds": 3.0},
        {"step": 5, "loss": 1.0},  # no timestamp (an older history): on the steps panel only
    ]
    assert loss_by_time(rows) == [(1.5, 3.5), (3.0, 2.0)]
    fig = plot_loss(rows)
    ax_time = fig.axes[1]
    (line,) = ax_time.get_lines()
    assert list(line.get_xdata()) == [1.5, 3.0] and list(line.get_ydata()) == [3.5, 2.0]
