"""Files that are not readable checkpoints (a config file, an empty, cut-off or garbage file) and
checkpoints of diverged runs: one clear error each, from the loader and from the command line."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import torch

from contrastkit.cli import main
from contrastkit.errors import ContrastkitError
from contrastkit.training import TrainConfig, train
from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint

HINT = "give the run folder or its checkpoint.pt, or restore it from a copy"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `contrastkit train` run: 1 epoch on 200 digits."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig(
            limit=200,
            epochs=1,
            batch_size=32,
            knn_every=0,
            knn_k=20,
            progress=False,
            device="cpu",
            out=str(run),
        )
        train(config, out=io.StringIO())
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture
def run_copy(image_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(image_run, tmp_path / "run"))


def _damaged(run: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    data = (run / "checkpoint.pt").read_bytes()
    files = {
        "empty": (b"", "(the file is empty)"),
        "truncated": (data[: len(data) // 3], "(truncated or damaged"),
        "garbage": (bytes(range(1, 256)) * 8, "(not a torch file)"),
        "text": (b"cut off mid-write", "(not a torch file: it holds text)"),
    }
    out = {}
    for name, (payload, needle) in files.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(payload)
        out[name] = (path, needle)
    out["config"] = (run / "config.yaml", "(not a torch file: it holds text)")
    return out


def test_unreadable_files_say_what_they_are(run_copy: Path, tmp_path: Path) -> None:
    for name, (path, needle) in _damaged(run_copy, tmp_path).items():
        with pytest.raises(ContrastkitError) as info:
            load_checkpoint(path)
        msg = str(info.value)
        if name == "truncated":  # a torch file cut off or with changed bytes, whatever run it is of
            assert f"checkpoint {str(path)!r} is truncated or damaged (" in msg, msg
            assert "restore it from a copy" in msg, msg
        else:
            assert f"{str(path)!r} is not a readable contrastkit checkpoint {needle}" in msg, (name, msg)
            assert HINT in msg, msg
        for noise in ("Please file an issue", "weights_only", "EOFError", "pop from empty list", "\n"):
            assert noise not in msg, (name, msg)
        assert len(msg) < 400, msg


def test_a_pickle_with_python_objects_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "objects.pt"
    torch.save({"format": "contrastkit-checkpoint", "obj": Path("x")}, path)
    with pytest.raises(ContrastkitError, match=r"Python objects besides tensors.*not written by contrastkit"):
        load_checkpoint(path)


@pytest.mark.parametrize("target", ["config.yaml", "empty"])
def test_cli_eval_resume_and_report_on_a_file_that_is_no_checkpoint(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    path = run_copy / "config.yaml" if target == "config.yaml" else tmp_path / "empty.pt"
    if target == "empty":
        path.write_bytes(b"")
    for argv in (["eval", str(path)], ["train", "--resume", str(path)], ["export", str(path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "is not a readable contrastkit checkpoint" in err and HINT in err, err
        assert "Please file an issue" not in err and "Traceback" not in err, err


def test_a_good_checkpoint_still_loads(image_run: Path) -> None:
    state = load_checkpoint(image_run)
    assert state["format"] == "contrastkit-checkpoint" and "data_info" in state


def test_nonfinite_tensors_are_named() -> None:
    from contrastkit.training.checkpoint import nonfinite_tensors, refuse_nonfinite_model

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert nonfinite_tensors(model.state_dict()) == []
    refuse_nonfinite_model(model, "x.pt")
    with torch.no_grad():
        model[0].weight[0, 1] = float("nan")
    model[1].running_var.fill_(float("inf"))
    assert nonfinite_tensors(model.state_dict()) == ["0.weight", "1.running_var"]
    with pytest.raises(ContrastkitError, match=r"non-finite values in 0\.weight \(and 1 more tensor\): "):
        refuse_nonfinite_model(model, "x.pt")


def _diverge(run: Path, name: str) -> str:
    """Put a NaN (or an inf in a buffer) into the model of the run's checkpoint; returns the tensor's name."""
    state = load_checkpoint(run)
    keys = [k for k, v in state["model"].items() if v.is_floating_point()]
    key = next(k for k in keys if name in k)
    state["model"][key] = state["model"][key].clone().fill_(float("nan" if "weight" in name else "inf"))
    state.pop("format")
    state.pop("version")
    save_checkpoint(state, run / "checkpoint.pt")
    return key


@pytest.mark.parametrize("name", ["weight", "running_var"])
def test_export_refuses_a_diverged_model(run_copy: Path, name: str) -> None:
    from contrastkit.export import export_backbone

    key = _diverge(run_copy, name)
    with pytest.raises(
        ContrastkitError, match=rf"non-finite values in {key}\b.*training diverged; resume from"
    ):
        export_backbone(run_copy, out=io.StringIO())
    assert not (run_copy / "backbone.safetensors").exists()


def test_embed_refuses_a_diverged_model(run_copy: Path, tmp_path: Path) -> None:
    from contrastkit.embed import embed_run

    key = _diverge(run_copy, "running_var")  # a buffer: the features might even stay finite
    with pytest.raises(ContrastkitError, match=rf"non-finite values in {key}\b.*lower --lr"):
        embed_run(run_copy, tmp_path / "e.npz", device="cpu", out=io.StringIO())
    assert not (tmp_path / "e.npz").exists()


def test_cli_export_and_embed_of_a_diverged_run(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _diverge(run_copy, "weight")
    assert main(["export", str(run_copy)]) == 2
    assert f"has non-finite values in {key}" in capsys.readouterr().err
    assert main(["embed", str(run_copy), "--out", str(tmp_path / "e.npy"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"has non-finite values in {key}" in err and "Traceback" not in err


def test_a_checkpoint_write_that_fails_inside_torch_save_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    """On a full disk torch.save's zip writer raises a RuntimeError, not the OSError: still a clear error,
    the previous checkpoint intact and no temporary file left."""
    import torch

    from contrastkit.errors import ContrastkitError
    from contrastkit.training import checkpoint as ckpt

    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint({"step": 5}, path)
    before = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 10")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        ContrastkitError, match=r"cannot write .*checkpoint\.pt.*the write failed; .* MiB free"
    ):
        ckpt.save_checkpoint({"step": 6}, path)
    assert path.read_bytes() == before and list(tmp_path.glob("*.tmp")) == []


def test_a_stale_temporary_that_cannot_be_removed_warns(tmp_path, monkeypatch) -> None:
    import errno

    from contrastkit.training import checkpoint as ckpt

    (tmp_path / "checkpoint.pt.abc.tmp").write_bytes(b"x")

    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.warns(
        UserWarning, match=r"could not remove the stale temporary file .* \(Read-only file system\)"
    ):
        ckpt.remove_stale_temporaries(tmp_path / "checkpoint.pt")
