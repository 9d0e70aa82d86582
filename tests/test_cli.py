"""The command line, run for real in subprocesses: outputs, config merging, and clean errors."""

import json
import subprocess
import sys
import zipfile
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from PIL import Image

from contrastkit.cli import build_parser, config_from_args
from contrastkit.training.config import TrainConfig


def run_cli(*args, cwd=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "contrastkit", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def assert_clean_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


def make_folder(root: Path, classes=("a", "b"), per_class=6, size=12):
    g = torch.Generator().manual_seed(0)
    for split in ("train",):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                px = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(px).save(d / f"{i}.png")
    return root


def test_help_lists_every_option():
    out = run_cli("train", "--help")
    assert out.returncode == 0
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out.stdout, f.name
    assert "--config" in out.stdout
    assert run_cli("eval", "--help").returncode == 0


def test_flags_win_over_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 7\nlr: 0.5\ntemperature: 0.3\n")
    args = build_parser().parse_args(["train", "--config", str(cfg), "--epochs", "2", "--no-progress"])
    c = config_from_args(args)
    assert (c.epochs, c.lr, c.temperature, c.progress) == (2, 0.5, 0.3, False)


def test_train_then_eval_digits(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "train", "--epochs", "2", "--batch-size", "128", "--knn-every", "1", "--no-progress", "--out", out
    )
    assert proc.returncode == 0, proc.stderr
    assert "learned encoder" in proc.stdout and "raw pixels" in proc.stdout and "random" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["knn_top1"] <= 1 and metrics["images_per_second"] > 0
    assert [p["epoch"] for p in metrics["knn_curve"]] == [1, 2]
    assert (out / "config.yaml").is_file() and (out / "checkpoint.pt").is_file()
    ev = run_cli("eval", out)
    assert ev.returncode == 0, ev.stderr
    again = json.loads((out / "metrics.json").read_text())["evaluation"]["knn"]
    assert again["top1"] == pytest.approx(metrics["knn_top1"], abs=1e-6)
    assert again["top1_random_init"] == pytest.approx(metrics["knn_top1_random_init"], abs=1e-6)
    # a finished run is never overwritten
    assert_clean_error(run_cli("train", "--epochs", "1", "--out", out), "already holds a run")


def test_image_folder_zip_without_test_split(tmp_path):
    root = make_folder(tmp_path / "imgs")
    z = tmp_path / "imgs.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in root.rglob("*.png"):
            zf.write(p, p.relative_to(root).as_posix())
    proc = run_cli(
        "train", "--data", z, "--epochs", "1", "--batch-size", "4", "--no-progress", "--out", tmp_path / "r"
    )
    assert proc.returncode == 0, proc.stderr
    assert "held out" in proc.stdout


def test_bad_inputs_give_clear_errors(tmp_path):
    assert_clean_error(run_cli("train", "--data", tmp_path / "nope"), "nope", "does not exist")
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_cli("train", "--data", tmp_path / "empty"), "train")
    root = make_folder(tmp_path / "corrupt")
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG not really an image")
    assert_clean_error(run_cli("train", "--data", root, "--epochs", "1"), "broken.png")
    assert_clean_error(
        run_cli("train", "--batch-size", "5000", "--epochs", "1"), "batch size 5000", "--batch-size"
    )
    assert_clean_error(run_cli("train", "--objective", "nce++", "--epochs", "1"), "nce++", "infonce")
    assert_clean_error(run_cli("train", "--temperature", "-1"), "--temperature")
    assert_clean_error(run_cli("eval", tmp_path / "nothing-here"), "does not exist")
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("epochz = 3\n")
    assert_clean_error(run_cli("train", "--config", bad_cfg), "epochz")
    # argparse's own errors: exit 2 with usage, no traceback
    assert_clean_error(run_cli("train", "--epochs", "many"), "invalid int value")


@pytest.mark.parametrize("command", ["train", "text-train", "audio-train", "sela"])
def test_each_flags_help_states_its_default_once(command: str) -> None:
    """A help that says its own (derived) default got a second, wrong '(default: None)' in train and
    text-train ("--lr ... (default: sgd 0.06, ...) (default: None)")."""
    import argparse

    from contrastkit.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    helps = {a.dest: a.help or "" for a in parser._actions if a.dest not in ("help", "resume", "config")}
    assert helps and all(h.count("(default") <= 1 for h in helps.values()), [
        h for h in helps.values() if h.count("(default") > 1
    ]
    assert "(default: None)" not in " ".join(helps.values())


def test_the_librarys_warnings_print_as_contrastkit_warning_lines() -> None:
    """Inside a command, contrastkit's own warnings read like its other WARNING lines (they printed as
    '/path/src/contrastkit/data/folder.py:573: UserWarning: ...' plus the source line); others unchanged."""
    import warnings
    from pathlib import Path

    import contrastkit
    from contrastkit import cli

    inside = str(Path(contrastkit.__file__).parent / "data" / "folder.py")
    plain = warnings.formatwarning
    with cli._warning_lines():
        ours = warnings.formatwarning("train/ has 1 file(s) that are not images", UserWarning, inside, 573)
        other = warnings.formatwarning("deprecated", UserWarning, "/elsewhere/lib.py", 3)
        future = warnings.formatwarning("changes", FutureWarning, inside, 5)
    assert ours == "contrastkit: WARNING: train/ has 1 file(s) that are not images\n"
    assert other == plain("deprecated", UserWarning, "/elsewhere/lib.py", 3)
    assert "FutureWarning" in future
    assert warnings.formatwarning is plain
