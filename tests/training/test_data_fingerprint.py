"""The training data's fingerprint covers the images' contents: a resume on a zip whose images were replaced by
others of the same names is refused; an unchanged resume, and a checkpoint kept before the contents were
fingerprinted, still resume. A folder's record is the files' sizes (no read of the images)."""

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.data import load_dataset
from contrastkit.errors import ConfigError, UndecodableImageError
from contrastkit.training import TrainConfig, train
from contrastkit.training.checkpoint import load_checkpoint
from contrastkit.training.resume import resume_config

pytestmark = pytest.mark.usefixtures("one_thread")


def png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def digit_members(n=60):
    """``{name: PNG bytes}`` of ``n`` digits laid out as train/<class>/ (two thirds) and test/<class>/."""
    digits = load_dataset("digits", limit=n).train
    members = {}
    for i, (img, label) in enumerate(zip(digits.images, digits.labels.tolist(), strict=True)):
        split = "test" if i % 3 == 0 else "train"
        members[f"{split}/{label}/{i:03d}.png"] = png(img[0].numpy())
    return members


def write_zip(path, members, prefix=""):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(prefix + name, data)
    return path


def other_image(data):
    """A valid PNG of the same size as ``data`` with other pixels (the image inverted)."""
    return png(255 - np.asarray(Image.open(io.BytesIO(data))))


def unfinished(run, drop_contents=False, drop_eval=False):
    """The run's checkpoint made resumable again (its loop is done: a resume finishes it at once)."""
    state = load_checkpoint(run / "checkpoint.pt")
    state["finished"] = False
    if drop_contents:  # what a contrastkit that fingerprinted only the names kept
        state["data_fingerprint"].pop("contents_sha256", None)
        state["data_fingerprint"].pop("contents", None)
    if drop_eval:  # what a contrastkit before the eval images' fingerprint kept
        state["data_fingerprint"].pop("eval_items", None)
        state["data_fingerprint"].pop("eval_names_sha256", None)
    torch.save(state, run / "checkpoint.pt")


def resume(run):
    return train(resume_config(run)[0], resume=run, out=io.StringIO())


@pytest.fixture
def zip_run(tmp_path):
    """A 1-epoch run on a zip of 40 train + 20 test digits (batch 16: 2 steps), and the zip's members."""
    members = digit_members()
    data = write_zip(tmp_path / "digits.zip", members)
    config = TrainConfig(
        data=str(data), epochs=1, batch_size=16, knn_every=0, progress=False, device="cpu", seed=0,
        out=str(tmp_path / "run"),
    )  # fmt: skip
    run = train(config, out=io.StringIO()).run_dir
    return run, data, members


def test_a_zip_whose_image_was_replaced_under_the_same_name_is_refused(zip_run):
    run, data, members = zip_run
    saved = load_checkpoint(run / "checkpoint.pt")["data_fingerprint"]
    unfinished(run)
    assert resume(run).metrics["resumed_at_steps"] == [2]  # unchanged: resumes

    name = next(n for n in members if n.startswith("train/"))
    write_zip(data, {**members, name: other_image(members[name])})  # same names, count and size
    unfinished(run)
    with pytest.raises(ConfigError) as info:
        resume(run)
    message = str(info.value)
    assert saved["contents"].startswith("zip: name, CRC-32, size") and len(saved["contents_sha256"]) == 64
    assert "changed since the run started" in message
    assert "contents differ under the same file names (an image was replaced" in message
    assert "file names differ" not in message and "training images: run had" not in message
    assert saved["contents_sha256"][:12] in message  # old hash, then the new one
    assert not load_checkpoint(run / "checkpoint.pt")["finished"]  # the refused resume wrote nothing

    write_zip(data, members)  # the data put back as it was: resumes again
    assert resume(run).metrics["resumed_at_steps"] == [2, 2]


def test_a_checkpoint_without_contents_still_resumes(zip_run):
    run, data, members = zip_run
    name = next(n for n in members if n.startswith("train/"))
    write_zip(data, {**members, name: other_image(members[name])})
    unfinished(run, drop_contents=True)  # compared only when both sides have it
    resume(run)
    assert load_checkpoint(run / "checkpoint.pt")["finished"]


def test_a_checkpoint_without_the_eval_fingerprint_still_resumes(zip_run):
    """Kept before the eval images were fingerprinted: no eval_items, no eval_names_sha256 (a KeyError)."""
    run, _, _ = zip_run
    unfinished(run, drop_eval=True)
    resume(run)
    assert load_checkpoint(run / "checkpoint.pt")["finished"]


def test_zip_records_come_from_the_central_directory(tmp_path):
    from contrastkit.training.data import contents_fingerprint

    members = digit_members(12)
    train_names = sorted(n for n in members if n.startswith("train/"))
    plain = contents_fingerprint(write_zip(tmp_path / "a.zip", members), train_names)
    wrapped = contents_fingerprint(write_zip(tmp_path / "b.zip", members, prefix="wrap/"), train_names)
    assert plain == wrapped  # the names are relative to the data's root, as the loaders give them
    assert contents_fingerprint(tmp_path / "a.zip", list(reversed(train_names))) == plain  # order-free
    # a replaced test image is not among the training images: no change
    test_name = next(n for n in members if n.startswith("test/"))
    changed = {**members, test_name: other_image(members[test_name])}
    assert contents_fingerprint(write_zip(tmp_path / "c.zip", changed), train_names) == plain
    changed = {**members, train_names[0]: other_image(members[train_names[0]])}
    assert contents_fingerprint(write_zip(tmp_path / "d.zip", changed), train_names) != plain


def test_folder_records_are_names_and_sizes(tmp_path):
    from contrastkit.training.data import contents_fingerprint

    members = digit_members(12)
    root = tmp_path / "imgs"
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    names = sorted(n for n in members if n.startswith("train/"))
    before = contents_fingerprint(root, names)
    assert before["contents"].startswith("folder: name, size")
    target = root / names[0]
    target.write_bytes(target.read_bytes() + b"\0" * 7)  # another size: noticed
    assert contents_fingerprint(root, names) != before
    target.write_bytes(members[names[0]])
    assert contents_fingerprint(root, names) == before
    same_size = bytearray(members[names[0]])
    same_size[-1] ^= 0xFF  # a same-size replacement in a folder is not detected (documented)
    target.write_bytes(bytes(same_size))
    assert contents_fingerprint(root, names) == before


def test_a_run_whose_data_was_moved_resumes_with_the_new_path_checked_by_the_fingerprint(zip_run, tmp_path):
    run, data, members = zip_run
    moved = data.rename(tmp_path / "elsewhere.zip")
    unfinished(run)
    with pytest.raises(
        ConfigError, match=r"which no longer exists: if the data was moved, give its new place"
    ):
        resume_config(run)
    config, _ = resume_config(run, {"data": str(moved)})
    assert config.data == str(moved)
    assert train(config, resume=run, out=io.StringIO()).metrics["resumed_at_steps"] == [2]
    other = dict(members)
    name = next(n for n in members if n.startswith("train/"))
    other[name] = other_image(members[name])
    impostor = write_zip(tmp_path / "impostor.zip", other)
    moved.unlink()  # moved again, and other data given in its place
    unfinished(run)
    config, _ = resume_config(run, {"data": str(impostor)})
    with pytest.raises(ConfigError, match="changed since the run started"):  # the fingerprint still decides
        train(config, resume=run, out=io.StringIO())


def test_a_changed_test_split_is_refused(zip_run):
    """The kNN points before the stop and the references were measured on the eval images: a resume on
    another test split would mix two evaluations in one curve."""
    run, data, members = zip_run
    tests = [n for n in members if n.startswith("test/")]
    write_zip(data, {n: v for n, v in members.items() if n not in tests[::2]})  # half the test split gone
    unfinished(run)
    with pytest.raises(ConfigError, match=rf"eval images: run had {len(tests)}, now {len(tests) // 2}"):
        resume(run)
    renamed = {(n.replace(".png", "x.png") if n == tests[0] else n): v for n, v in members.items()}
    write_zip(data, renamed)
    with pytest.raises(ConfigError, match=r"the eval images' file names differ"):
        resume(run)
    write_zip(data, members)
    assert resume(run).metrics["resumed_at_steps"] == [2]


def _weights(run):
    return load_checkpoint(run / "checkpoint.pt")["model"]


def test_a_streamed_image_that_cannot_be_decoded_stops_resumably_once_replaced(tmp_path):
    """A corrupt image met mid-run (streamed: not decoded up front) stops the run with a checkpoint of the
    steps done and the image's record in undecodable.json; once it is replaced under the same name, the
    resume is accepted (only that file changed) and ends exactly as an uninterrupted run on the fixed data."""
    members = digit_members()
    names = sorted(n for n in members if n.startswith("train/"))
    bad = names[-1]  # after the probed first images, and (with knn_images=4) outside the kNN subsets
    good = write_zip(tmp_path / "good.zip", members)

    def config(data, out):
        return TrainConfig(
            data=str(data), data_placement="stream", image_size=8, workers=0, knn_images=4, epochs=2,
            batch_size=8, knn_every=0, progress=False, device="cpu", seed=0, out=str(tmp_path / out),
        )  # fmt: skip

    reference = train(config(good, "reference"), out=io.StringIO()).run_dir
    data = write_zip(tmp_path / "data.zip", {**members, bad: b"\x89PNG broken"})
    with pytest.raises(UndecodableImageError) as err:
        train(config(data, "run"), out=io.StringIO())
    run = tmp_path / "run"
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert 0 < step < 10 and err.value.name == bad
    assert f"at step {step + 1} of 10" in str(err.value) and f"holds the state after step {step}" in str(
        err.value
    )
    assert "continue with: contrastkit train --resume" in str(err.value)
    recorded = json.loads((run / "undecodable.json").read_text())
    assert list(recorded) == [bad] and recorded[bad]["step"] == step + 1
    with pytest.raises(UndecodableImageError, match=f"at step {step + 1} of 10"):  # not fixed yet
        resume(run)
    other = dict(members)
    other[names[0]] = other_image(members[names[0]])  # another image changed as well: refused
    write_zip(data, other)
    with pytest.raises(ConfigError, match=r"besides the image.s. listed in .*undecodable.json"):
        resume(run)
    write_zip(data, members)  # the broken image replaced by a readable one, all else as it was
    out = io.StringIO()
    result = train(resume_config(run)[0], resume=run, out=out)
    assert (
        f"NOTE: resuming with 1 image(s) the run could not decode, replaced since: {bad!r}" in out.getvalue()
    )
    assert result.metrics["resumed_at_steps"] == [step]
    final, expected = _weights(run), _weights(reference)
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def _stream_config(tmp_path, data, out, **kw):
    return TrainConfig(
        data=str(data), data_placement="stream", image_size=8, workers=0, knn_images=4, batch_size=8,
        knn_every=0, progress=False, device="cpu", seed=0, out=str(tmp_path / out), **kw,
    )  # fmt: skip


def test_two_undecodable_images_and_a_second_broken_copy_still_resume_exactly(tmp_path):
    """Each resume applies only the records made after its checkpoint: a first image fixed and resumed past
    does not spoil the second one's resume (its stale record did), and a replacement that is broken again
    keeps the record that the checkpoint counted (it was overwritten, and the run was lost)."""
    members = digit_members()
    names = sorted(n for n in members if n.startswith("train/"))
    broken = {names[-1]: b"\x89PNG broken", names[-2]: b"\x89PNG broken"}
    kw = dict(epochs=3, checkpoint_every=100)
    reference = train(_stream_config(tmp_path, write_zip(tmp_path / "good.zip", members), "ref", **kw),
                      out=io.StringIO()).run_dir  # fmt: skip
    data = write_zip(tmp_path / "data.zip", {**members, **broken})
    run = tmp_path / "run"
    with pytest.raises(UndecodableImageError) as err:
        train(_stream_config(tmp_path, data, "run", **kw), out=io.StringIO())
    first, second = err.value.name, next(n for n in broken if n != err.value.name)
    stop = load_checkpoint(run / "checkpoint.pt")["step"]
    write_zip(data, {**members, first: b"\x89PNG broken again, longer", second: broken[second]})
    with pytest.raises(UndecodableImageError, match=f"at step {stop + 1} of "):  # broken again, same step
        resume(run)
    write_zip(data, {**members, second: broken[second]})  # the first one fixed
    with pytest.raises(UndecodableImageError) as err:
        resume(run)
    assert err.value.name == second and load_checkpoint(run / "checkpoint.pt")["step"] > stop
    write_zip(data, members)  # both fixed
    assert resume(run).metrics["resumed_at_steps"][0] == stop
    final, expected = _weights(run), _weights(reference)
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_a_record_older_than_the_checkpoint_is_not_applied(tmp_path):
    """A record is the file as the run met it; once a checkpoint has counted the file since, the record no
    longer applies. In a folder (records: name and size) a file broken in place at its own size and then
    fixed has a record equal to the good file's: applied to a later checkpoint, it accepted a resume after
    that file changed size."""
    members = digit_members()
    bad = sorted(n for n in members if n.startswith("train/"))[-1]
    root = tmp_path / "folder"
    for name, blob in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    (root / bad).write_bytes(b"\0" * len(members[bad]))  # broken in place, same size
    run = tmp_path / "run"
    with pytest.raises(UndecodableImageError):
        train(_stream_config(tmp_path, root, "run", epochs=3, checkpoint_every=1), out=io.StringIO())
    (root / bad).write_bytes(members[bad])
    assert resume(run).metrics["resumed_at_steps"]
    unfinished(run)  # its last checkpoint counted the fixed file
    (root / bad).write_bytes(png(np.zeros((8, 8), dtype=np.uint8)) + b"\0" * 7)  # readable, another size
    with pytest.raises(ConfigError, match="contents differ under the same file names"):
        resume(run)


def test_data_gone_mid_run_keeps_the_steps_done_and_says_to_put_it_back(tmp_path, monkeypatch):
    import contrastkit.training.trainer as trainer

    data = write_zip(tmp_path / "d.zip", digit_members())
    real = trainer._Loop._step

    def step(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.step == 3:
            data.rename(tmp_path / "moved.zip")

    monkeypatch.setattr(trainer._Loop, "_step", step)
    with pytest.raises(UndecodableImageError, match=r"No such file.* holds the state after step 3: put the "
                       r"data back and continue with: contrastkit train --resume .*add --data NEW_PATH"):  # fmt: skip
        train(_stream_config(tmp_path, data, "run", epochs=2, checkpoint_every=2), out=io.StringIO())
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3
    assert not (tmp_path / "run" / "undecodable.json").exists()  # nothing to record: no file was replaced


def test_contents_records_keep_one_line_per_listed_name(tmp_path):
    """A zip listing a member twice (zipfile's append mode) hashes one record line per listed name, as the
    fingerprint always did: a dict of records by name had made a checkpoint of such a zip unresumable."""
    import hashlib
    import warnings

    from contrastkit.data.folder import list_image_folder
    from contrastkit.training.data import contents_fingerprint

    members = digit_members()
    first = sorted(n for n in members if n.startswith("train/"))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile: "Duplicate name"
        with zipfile.ZipFile(tmp_path / "dup.zip", "w") as zf:
            for name, blob in {**members}.items():
                zf.writestr(name, blob)
            zf.writestr(first, members[first])
    names = list_image_folder(tmp_path / "dup.zip").splits["train"].names
    assert len(names) == len(set(names)) + 1
    with zipfile.ZipFile(tmp_path / "dup.zip") as zf:
        infos = {i.filename: i for i in zf.infolist()}  # the last of a repeated name, as the reader reads
    lines = [f"{n}\t{infos[n].CRC:08x}\t{infos[n].file_size}" for n in sorted(names)]
    expected = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert contents_fingerprint(tmp_path / "dup.zip", names)["contents_sha256"] == expected


def _record_many(args):
    run_dir, source, names, barrier = args
    from contrastkit.training.data import record_undecodable

    barrier.wait()
    for step, name in enumerate(names, start=1):
        record_undecodable(run_dir, source, name, step, None)


def test_records_from_processes_writing_at_once_are_all_kept(tmp_path):
    """Under torchrun two ranks may meet undecodable images at the same moment: each one's record survives
    (the read-modify-write of undecodable.json is serialised), so the resume can apply them all."""
    import multiprocessing as mp

    from contrastkit.training.data import undecodable_records

    src = tmp_path / "imgs"
    src.mkdir()
    procs, per_proc = 4, 25
    names = [[f"train/0/p{p}_{i:02d}.png" for i in range(per_proc)] for p in range(procs)]
    (src / "train" / "0").mkdir(parents=True)
    for group in names:
        for n in group:
            (src / n).write_bytes(b"x" * 7)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs)
    workers = [ctx.Process(target=_record_many, args=((run_dir, str(src), g, barrier),)) for g in names]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * procs
    records = undecodable_records(run_dir)
    assert sorted(records) == sorted(n for g in names for n in g)
    assert records["train/0/p0_00.png"] == {"record": "train/0/p0_00.png\t7", "step": 1}
    assert not [p.name for p in run_dir.iterdir() if p.name != "undecodable.json"]  # no lock file left
