"""``contrastkit export``: the backbone as safetensors, loaded back into a plain ``nn.Module``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from contrastkit.cli import main
from contrastkit.encoders import SmallCNN, build_encoder
from contrastkit.errors import ContrastkitError
from contrastkit.export import export_backbone, load_backbone, read_export_metadata
from contrastkit.training import TrainConfig, build_model
from contrastkit.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_backbone(
        trained_run, tmp_path_factory.mktemp("export") / "f.safetensors", out=io.StringIO()
    )


def checkpoint_model(run: Path) -> torch.nn.Module:
    state = load_checkpoint(run)
    info = state["data_info"]
    model = build_model(TrainConfig.from_dict(state["config"]), info["channels"], info["image_size"])
    model.load_state_dict(state["model"])
    return model.eval()


def test_loaded_backbone_gives_the_checkpoints_features(exported: Path, trained_run: Path) -> None:
    backbone = load_backbone(exported)
    assert type(backbone) is SmallCNN and not backbone.training
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(backbone(x), checkpoint_model(trained_run).features(x))


def test_documented_manual_load_with_strict_state_dict(exported: Path, trained_run: Path) -> None:
    with safe_open(str(exported), "pt") as f:
        meta = json.loads(f.metadata()["contrastkit"])
    module = build_encoder(meta["architecture"], **meta["constructor"])
    module.load_state_dict(load_file(str(exported)), strict=True)
    module.eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(module(x), checkpoint_model(trained_run).backbone(x))
    state = load_checkpoint(trained_run)
    assert meta["input"]["mean"] == state["data_info"]["mean"]
    assert meta["feature_dim"] == module.feature_dim == 256
    assert (
        json.loads(exported.with_name(exported.name + ".json").read_text())
        == meta
        == read_export_metadata(exported)
    )


def test_default_path_is_inside_the_run(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(run_copy)]) == 0
    assert (run_copy / "backbone.safetensors").is_file() and (
        run_copy / "backbone.safetensors.json"
    ).is_file()
    assert "small_cnn" in capsys.readouterr().out


def test_bad_files_give_clear_errors(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(ContrastkitError, match="does not exist"):
        load_backbone(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ContrastkitError, match="not a readable safetensors file"):
        load_backbone(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ContrastkitError, match="no contrastkit metadata"):
        load_backbone(plain)
    wrong = tmp_path / "wrong.safetensors"
    meta = read_export_metadata(exported)
    state = load_file(str(exported))
    state.pop(next(k for k in state if k.endswith("weight")))
    save_file(state, str(wrong), metadata={"contrastkit": json.dumps(meta)})
    with pytest.raises(ContrastkitError, match="do not fit a small_cnn"):
        load_backbone(wrong)


def test_cli_export_errors(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, words in (
        ([str(tmp_path / "nope")], "does not exist"),
        ([str(tmp_path)], "has no checkpoint.pt"),
        ([str(trained_run), "--out", str(tmp_path / "f.pt")], "must end in .safetensors"),
        ([str(trained_run), "--out", str(tmp_path / "no" / "f.safetensors")], "create it first"),
    ):
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("contrastkit: error:") and words in err and "\n" not in err


def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the run's model is loaded: a refusal must come before the work."""
    import contrastkit.reporting.run as run_module

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the output file was checked")

    monkeypatch.setattr(run_module, "load_trained_run", boom)


def test_an_existing_export_is_refused_before_the_work(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "f.safetensors"
    target.write_bytes(b"precious")
    no_model_loading(monkeypatch)
    assert main(["export", str(trained_run), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contrastkit: error:") and "\n" not in err
    assert f"{str(target)!r} already exists" in err and "another --out" in err and "--overwrite" in err
    assert target.read_bytes() == b"precious"
    # the sidecar alone is refused too: it would be replaced
    target.unlink()
    sidecar = tmp_path / "f.safetensors.json"
    sidecar.write_text("{}")
    with pytest.raises(ContrastkitError, match=r"f\.safetensors\.json' already exists"):
        export_backbone(trained_run, target, out=io.StringIO())
    assert sidecar.read_text() == "{}" and not target.exists()


def test_an_existing_default_export_is_refused_before_the_work(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (run_copy / "backbone.safetensors").write_bytes(b"an earlier export")
    no_model_loading(monkeypatch)
    with pytest.raises(ContrastkitError, match=r"backbone\.safetensors' already exists.*--overwrite"):
        export_backbone(run_copy, out=io.StringIO())
    assert (run_copy / "backbone.safetensors").read_bytes() == b"an earlier export"


def test_overwrite_replaces_the_export_atomically(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import contrastkit.training.checkpoint as ckpt

    target = tmp_path / "f.safetensors"
    target.write_bytes(b"old")
    (tmp_path / "f.safetensors.json").write_text("old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:  # a write that fails half-way leaves the old file whole
        m.setattr(ckpt.os, "fsync", disk_full)
        assert main(["export", str(trained_run), "--out", str(target), "--overwrite"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert target.read_bytes() == b"old" and not list(tmp_path.glob("*.tmp"))
    assert main(["export", str(trained_run), "--out", str(target), "--overwrite"]) == 0
    assert f"wrote {target}" in capsys.readouterr().out
    assert type(load_backbone(target)) is SmallCNN
    assert json.loads((tmp_path / "f.safetensors.json").read_text()) == read_export_metadata(target)


def test_an_mlp_without_batchnorm_exports_and_loads(tmp_path: Path) -> None:
    """--encoder mlp --no-batchnorm: the metadata records it (the export failed, leaving a file that did not
    load); an export that would not load is refused before anything is written."""
    from contrastkit.encoders import MLP
    from contrastkit.training import train

    run = tmp_path / "run"
    train(TrainConfig(epochs=1, batch_size=64, limit=128, encoder="mlp", batchnorm=False, knn_every=0,
                      progress=False, out=str(run)))  # fmt: skip
    path = export_backbone(run, out=io.StringIO())
    meta = read_export_metadata(path)
    assert meta["constructor"]["batchnorm"] is False and meta["version"] == 2  # older readers: "upgrade"
    backbone = load_backbone(path)
    assert type(backbone) is MLP and not any(isinstance(m, torch.nn.BatchNorm1d) for m in backbone.modules())
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(backbone(x), checkpoint_model(run).features(x))


def test_an_export_that_would_not_load_writes_nothing(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contrastkit import export

    real = export._metadata
    monkeypatch.setattr(export, "_metadata", lambda t: {**real(t), "architecture": "mlp"})  # a wrong record
    target = tmp_path / "f.safetensors"
    with pytest.raises(ContrastkitError, match="do not fit a mlp"):
        export_backbone(trained_run, target, out=io.StringIO())
    assert list(tmp_path.iterdir()) == []
