"""Output files: written with the umask's permissions, and a file system that refuses them is a clear error
(naming the path and the reason), never a traceback after the work."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from contrastkit.errors import ContrastkitError
from contrastkit.training import checkpoint as ckpt
from contrastkit.training.checkpoint import check_output_folder, save_checkpoint, write_atomic
from contrastkit.training.run_folder import write_metrics


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_get_the_umask_permissions_not_0600(tmp_path: Path, umask_022: None) -> None:
    save_checkpoint({"x": 1}, tmp_path / "checkpoint.pt")
    write_metrics(tmp_path / "metrics.json", {"a": 1})
    write_atomic(tmp_path / "t.txt", lambda f: f.write("hi"), binary=False)
    for name in ("checkpoint.pt", "metrics.json", "t.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_umask_077_is_respected(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "t.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "t.bin").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("where", ["mkstemp", "replace"])
def test_read_only_file_system_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    (tmp_path / "metrics.json").write_text('{"old": 1}')

    def erofs(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    target = ckpt.tempfile if where == "mkstemp" else ckpt.os
    monkeypatch.setattr(target, where, erofs)
    with pytest.raises(ContrastkitError) as info:
        write_metrics(tmp_path / "metrics.json", {"new": 1})
    msg = str(info.value)
    assert "metrics.json" in msg and "Read-only file system" in msg and "another location" in msg
    assert (tmp_path / "metrics.json").read_text() == '{"old": 1}'  # the previous file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left


def test_a_write_that_fails_midway_keeps_its_cause(tmp_path: Path) -> None:
    def full(f: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(ContrastkitError, match="No space left on device"):
        write_atomic(tmp_path / "x.bin", full)
    assert list(tmp_path.iterdir()) == []


def test_check_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ContrastkitError, match=r"'.*afile' is a file, not a folder"):
        check_output_folder(tmp_path / "afile" / "sub.npz")
    with pytest.raises(ContrastkitError, match=r"'.*afile' is a file, not a folder"):
        check_output_folder(tmp_path / "afile" / "deeper" / "sub.npz")
    with pytest.raises(ContrastkitError, match="does not exist; create it first"):
        check_output_folder(tmp_path / "missing" / "sub.npz")
    assert check_output_folder(tmp_path / "ok.npz") == tmp_path / "ok.npz"
    monkeypatch.setattr(ckpt.os, "access", lambda *a, **k: False)
    with pytest.raises(ContrastkitError, match="is not writable"):
        check_output_folder(tmp_path / "ok.npz")
