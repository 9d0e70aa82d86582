"""``embed`` and ``export`` of an interrupted run say so, as ``eval`` and ``report`` do: a WARNING line with
the step reached and the resume command, and the checkpoint's progress recorded beside the output."""

from __future__ import annotations

import io
import json
from pathlib import Path

from contrastkit.embed import embed_run
from contrastkit.export import export_backbone, read_export_metadata

from ..conftest import interrupt


def test_embed_of_an_interrupted_run_warns_and_records_its_progress(run_copy: Path, tmp_path: Path) -> None:
    run = run_copy
    interrupt(run, 7, 15)
    printed = io.StringIO()
    out = tmp_path / "e.npz"
    emb = embed_run(run, out, device="cpu", out=printed)
    text = printed.getvalue()
    assert "WARNING: unfinished: step 7 of 15: this checkpoint is of an interrupted run" in text
    assert f"contrastkit train --resume {run} and embed again" in text
    assert emb.meta["training"] == {"finished": False, "trained_steps": 7, "total_steps": 15}
    assert "unfinished: step 7 of 15" in emb.meta["warnings"][0]


def test_export_of_an_interrupted_run_warns_and_records_its_progress(run_copy: Path, tmp_path: Path) -> None:
    run = run_copy
    interrupt(run, 7, 15)
    printed = io.StringIO()
    target = export_backbone(run, tmp_path / "b.safetensors", out=printed)
    assert "WARNING: unfinished: step 7 of 15" in printed.getvalue() and "export again" in printed.getvalue()
    meta = read_export_metadata(target)
    assert meta["training"] == {"finished": False, "trained_steps": 7, "total_steps": 15}
    assert "unfinished: step 7 of 15" in meta["warnings"][0]
    sidecar = json.loads(target.with_name(target.name + ".json").read_text())
    assert sidecar["training"] == meta["training"]


def test_a_finished_run_exports_and_embeds_without_a_warning(trained_run: Path, tmp_path: Path) -> None:
    printed = io.StringIO()
    target = export_backbone(trained_run, tmp_path / "b.safetensors", out=printed)
    emb = embed_run(trained_run, tmp_path / "e.npz", device="cpu", out=printed)
    assert "WARNING" not in printed.getvalue()
    meta = read_export_metadata(target)
    assert meta["training"]["finished"] is True and "warnings" not in meta
    assert emb.meta["training"]["finished"] is True and "warnings" not in emb.meta
