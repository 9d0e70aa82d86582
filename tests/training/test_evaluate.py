"""`contrastkit eval --all` end to end on a tiny digits run: one metrics.json, merged, with protocols."""

import io
import json

import pytest
import torch

from contrastkit.cli import main
from contrastkit.training import TrainConfig, evaluate_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            TrainConfig(
                epochs=1, batch_size=128, limit=400, knn_every=0, progress=False, device="cpu", out=str(out)
            )
        )
    finally:
        torch.set_num_threads(n)
    return out


def test_eval_all_merges_every_result_into_metrics_json(run_dir, capsys):
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert (
        main(["eval", str(run_dir), "--all", "--few-label", "0.025,0.1", "--limit", "400", "--device", "cpu"])
        == 0
    )
    printed = capsys.readouterr().out
    for needle in (
        "learned encoder",
        "linear probe top-1",
        "few-label fine-tuning top-1",
        "uniformity",
        "wrote",
    ):
        assert needle in printed, printed
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the training metrics are kept; the evaluation sits beside them
    assert {k: metrics[k] for k in trained} == trained
    ev = metrics["evaluation"]
    assert set(ev) == {"knn", "linear_probe", "few_label", "geometry"}
    assert ev["knn"]["top1"] == pytest.approx(trained["knn_top1"], abs=1e-6)  # same data, same limit
    every = ("checkpoint", "data", "limit", "train_images", "eval_images", "eval_split", "device")
    every += ("evaluated_at", "seconds", "finished", "trained_steps", "total_steps")  # docs/evaluation.md
    for entry in (ev["knn"], ev["linear_probe"], ev["geometry"], *ev["few_label"].values()):
        assert entry["data"] == "digits" and entry["limit"] == 400 and "protocol" in entry
        assert set(every) <= set(entry) and entry["seconds"] > 0
    for entry in ev["few_label"].values():  # the fine-tuning's own time, also kept in its protocol
        assert entry["seconds"] == entry["protocol"]["seconds"]
    # eval's kNN: fp32 features of every image of both splits (the training monitor may differ)
    knn = ev["knn"]["protocol"]
    assert knn["precision"] == "fp32" and knn["images"] == knn["train_images"] + knn["eval_images"]
    assert knn["train_images"] == ev["knn"]["train_images"] and knn["eval_images"] == ev["knn"]["eval_images"]
    lp = ev["linear_probe"]
    assert 0.2 < lp["top1"] <= 1.0  # chance is 0.1
    assert lp["weight_decay"] in lp["protocol"]["weight_decay_grid"]
    assert len(lp["heldout_top1_per_weight_decay"]) == len(lp["protocol"]["weight_decay_grid"])
    # (--all's default 0.01 of 400 images is 4 for 10 classes, which eval refuses: at least one a class)
    assert set(ev["few_label"]) == {"0.025", "0.1"}
    one = ev["few_label"]["0.025"]
    assert (
        one["fraction"] == 0.025
        and one["protocol"]["labelled_images"] == 10
        and one["protocol"]["epochs"] == 30
    )
    assert ev["few_label"]["0.1"]["protocol"]["labelled_images"] == 40
    geo = ev["geometry"]
    assert 0 <= geo["alignment"] <= 4 and -4 <= geo["uniformity"] <= 0 and 0 <= geo["kmeans_nmi"] <= 1
    assert not (run_dir / "eval.json").exists()
    assert not list(run_dir.glob("*.tmp"))

    # a later eval replaces only what it recomputes; few-label results merge per fraction
    before = ev["geometry"]
    result = evaluate_checkpoint(run_dir, limit=400, device="cpu", few_label=[0.05], out=io.StringIO())
    assert set(result["evaluation"]) == {"knn", "few_label"}
    ev2 = json.loads((run_dir / "metrics.json").read_text())["evaluation"]
    assert set(ev2["few_label"]) == {"0.025", "0.1", "0.05"}
    assert ev2["geometry"] == before and ev2["linear_probe"] == lp


def test_bad_fractions_are_a_clean_error(run_dir, capsys):
    assert main(["eval", str(run_dir), "--few-label", "0.01,two"]) == 2
    err = capsys.readouterr().err
    assert "--few-label" in err and "0.01,0.1" in err and "Traceback" not in err
    assert main(["eval", str(run_dir), "--few-label", "1.5"]) == 2


def test_eval_of_a_limited_run_without_a_test_split_holds_out_the_same_images(tmp_path):
    """Without a test/ split the eval images are held out of the listing --limit chose: eval keeps the run's
    limit (another listing would hold out images the run trained on) and refuses a different one."""
    import numpy as np
    from PIL import Image

    from contrastkit.errors import ConfigError

    rng = np.random.default_rng(0)
    for k, cls in enumerate(("a", "b", "c")):
        d = tmp_path / "imgs" / "train" / cls
        d.mkdir(parents=True)
        for i in range(40):
            px = rng.integers(0, 100, (8, 8, 3), dtype=np.uint8)
            px[:, :, k] += 150
            Image.fromarray(px).save(d / f"{i}.png")
    run = tmp_path / "run"
    trained = train(
        TrainConfig(
            data=str(tmp_path / "imgs"), limit=60, encoder="small_cnn", epochs=1, batch_size=16, knn_k=10,
            progress=False, device="cpu", out=str(run),
        )
    ).metrics  # fmt: skip
    m = evaluate_checkpoint(run, device="cpu", write=False)
    assert m["knn_protocol"]["eval_images"] == trained["knn_protocol"]["eval_images"] == 12
    assert "with the run's --limit 60" in m["knn_protocol"]["eval_split"]
    assert m["knn_top1"] == pytest.approx(trained["knn_top1"], abs=1e-6)  # the same images, the same model
    with pytest.raises(
        ConfigError, match=r"no test/ split.*--limit 90 would evaluate on images it trained on"
    ):
        evaluate_checkpoint(run, device="cpu", limit=90, write=False)


# ----- channels: the rule eval shares with embed and report ----------------------------------------------------


def digit_split_folder(root, mode):
    """60 digits as 8x8 PNGs under root/train/<class>/ (40) and root/test/<class>/ (20): ``L`` (grayscale),
    ``RGB`` (three different channels) or ``gray3`` (RGB files whose three channels are the gray image)."""
    import numpy as np
    from PIL import Image

    from contrastkit.data import load_dataset

    digits = load_dataset("digits", limit=60).train
    for i, (img, label) in enumerate(zip(digits.images, digits.labels.tolist(), strict=True)):
        g = img[0].numpy()
        array = {"L": g, "RGB": np.stack([g, 255 - g, g // 2], 2), "gray3": np.stack([g, g, g], 2)}[mode]
        folder = root / ("test" if i % 3 == 0 else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def rgb_runs(tmp_path_factory):
    """Two 1-epoch runs on 40 RGB digits (encoders that take 3 channels): in memory, and streamed."""
    root = tmp_path_factory.mktemp("rgb")
    data = str(digit_split_folder(root / "data", "RGB"))
    runs = {}
    for placement in ("auto", "stream"):
        config = TrainConfig(
            data=data, epochs=1, batch_size=16, knn_every=0, knn_k=5, progress=False, device="cpu",
            image_size=8, data_placement=placement, workers=0, out=str(root / placement),
        )  # fmt: skip
        runs[placement] = train(config, out=io.StringIO()).run_dir
    return runs


def test_eval_repeats_grayscale_for_an_rgb_encoder_and_records_the_note(rgb_runs, tmp_path, capsys):
    run = rgb_runs["auto"]
    gray = digit_split_folder(tmp_path / "gray", "L")
    args = ["eval", str(run), "--data", str(gray), "--device", "cpu"]
    assert main([*args, "--linear-probe", "--geometry", "--few-label", "0.5"]) == 0
    printed = capsys.readouterr().out
    notes = [line.removeprefix("NOTE: ") for line in printed.splitlines() if line.startswith("NOTE:")]
    assert len(notes) == 1, printed
    assert f"{str(gray)!r} has grayscale (1-channel) images" in notes[0] and "repeated to 3" in notes[0]
    ev = json.loads((run / "metrics.json").read_text())["evaluation"]["other_data"][str(gray)]
    for entry in (ev["knn"], ev["linear_probe"], ev["geometry"], *ev["few_label"].values()):
        assert entry["notes"] == notes  # a reader of metrics.json knows how the images were fed
    # the same as RGB files whose three channels are the gray image
    same = evaluate_checkpoint(run, data=str(digit_split_folder(tmp_path / "gray3", "gray3")), write=False)
    assert "notes" not in same and "notes" not in same["evaluation"]["knn"]
    assert ev["knn"]["top1"] == pytest.approx(same["knn_top1"], abs=1e-6)
    assert ev["knn"]["top1_raw_pixels"] == pytest.approx(same["knn_top1_raw_pixels"], abs=1e-6)


def test_eval_of_a_streamed_rgb_run_on_grayscale_data(rgb_runs, tmp_path):
    gray = digit_split_folder(tmp_path / "gray", "L")
    out = io.StringIO()
    m = evaluate_checkpoint(rgb_runs["stream"], data=str(gray), device="cpu", write=False, out=out)
    assert len(m["notes"]) == 1 and "repeated to 3" in m["notes"][0] and "NOTE: " in out.getvalue()
    same = evaluate_checkpoint(
        rgb_runs["stream"], data=str(digit_split_folder(tmp_path / "gray3", "gray3")), write=False
    )
    assert m["knn_top1"] == pytest.approx(same["knn_top1"], abs=1e-6)


def test_eval_refuses_rgb_data_for_a_grayscale_encoder(run_dir, tmp_path, capsys):
    rgb = digit_split_folder(tmp_path / "rgb", "RGB")
    before = (run_dir / "metrics.json").read_text()
    assert main(["eval", str(run_dir), "--data", str(rgb), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contrastkit: error:") and "\n" not in err
    assert "takes 1-channel images (grayscale)" in err and f"{str(rgb)!r} has 3-channel images (RGB)" in err
    assert "convert them to grayscale" in err
    assert (run_dir / "metrics.json").read_text() == before


def test_match_channels_rule():
    from contrastkit.errors import ConfigError
    from contrastkit.training.evaluate import match_channels

    gray = torch.arange(2 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    same, note = match_channels(gray, 1, encoder="the encoder", data="'x'")
    assert same is gray and note is None
    rgb, note = match_channels(gray, 3, encoder="the encoder", data="'x'")
    assert rgb.shape == (2, 3, 4, 4) and torch.equal(rgb[:, 2], gray[:, 0])
    assert note == (
        "'x' has grayscale (1-channel) images and the encoder takes RGB (3-channel) images: each image's "
        "channel is repeated to 3"
    )
    for c, want in ((3, 1), (2, 3), (4, 3), (2, 1)):
        with pytest.raises(
            ConfigError, match=rf"the encoder takes {want}-channel images.*'x' has {c}-channel"
        ):
            match_channels(
                torch.zeros(1, c, 4, 4, dtype=torch.uint8), want, encoder="the encoder", data="'x'"
            )
