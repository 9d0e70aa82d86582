"""``contrastkit eval`` says what it measured: an unfinished run, the k it used, too few labels, other data
kept apart from the run's own, and a one-class data set."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import contrastkit.training.evaluate as evaluate_module
from contrastkit.cli import main
from contrastkit.errors import ConfigError
from contrastkit.evaluation import check_label_fractions, finetune_few_labels
from contrastkit.training import TrainConfig, evaluate_checkpoint, train
from contrastkit.training.evaluate import merge_evaluation

from ..conftest import interrupt as interrupted

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evalqa") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            TrainConfig(
                epochs=1, batch_size=64, limit=200, knn_every=0, knn_k=20, progress=False, device="cpu",
                out=str(out),
            ),
            out=io.StringIO(),
        )  # fmt: skip
    finally:
        torch.set_num_threads(n)
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def gray_folder(root: Path, classes: tuple[str, ...], per_class: int = 20) -> Path:
    """A folder data set of 8x8 grayscale PNGs (one channel, like digits), train/ only."""
    rng = np.random.default_rng(0)
    for k, cls in enumerate(classes):
        d = root / "train" / cls
        d.mkdir(parents=True)
        for i in range(per_class):
            px = rng.integers(0, 100, (8, 8), dtype=np.uint8) + np.uint8(100 * k)
            Image.fromarray(px, mode="L").save(d / f"{i}.png")
    return root


def interrupt(run: Path, step: int = 73, total: int = 630) -> None:
    """Make the run's checkpoint look like one a Ctrl-C left at ``step`` of ``total``."""
    interrupted(run, step, total)


def test_eval_of_an_unfinished_run_says_so_and_records_it(run: Path) -> None:
    interrupt(run)
    printed = io.StringIO()
    result = evaluate_checkpoint(run, device="cpu", out=printed)
    text = printed.getvalue()
    assert "unfinished: step 73 of 630" in text.splitlines()[0]
    assert "WARNING: unfinished: step 73 of 630" in text and "--resume" in text
    assert (result["finished"], result["trained_steps"], result["total_steps"]) == (False, 73, 630)
    knn = json.loads((run / "metrics.json").read_text())["evaluation"]["knn"]
    assert (knn["finished"], knn["trained_steps"], knn["total_steps"]) == (False, 73, 630)
    assert any("unfinished: step 73 of 630" in w for w in knn["warnings"])


def test_eval_of_a_finished_run_records_its_steps_and_no_warning(run: Path) -> None:
    printed = io.StringIO()
    evaluate_checkpoint(run, device="cpu", out=printed)
    assert "WARNING" not in printed.getvalue() and "unfinished" not in printed.getvalue()
    knn = json.loads((run / "metrics.json").read_text())["evaluation"]["knn"]
    assert knn["finished"] is True and knn["trained_steps"] == knn["total_steps"] > 0
    assert "warnings" not in knn


def test_knn_k_larger_than_the_training_set_records_the_k_used(run: Path) -> None:
    printed = io.StringIO()
    result = evaluate_checkpoint(run, device="cpu", knn_k=100000, out=printed)
    n_train = result["knn_protocol"]["train_images"]
    assert n_train < 100000
    assert result["knn_protocol"]["k"] == n_train and result["knn_protocol"]["k_requested"] == 100000
    text = printed.getvalue()
    assert f"k={n_train}," in text and "k=100000," not in text
    assert f"--knn-k 100000 clamped to the {n_train} training images" in text
    knn = json.loads((run / "metrics.json").read_text())["evaluation"]["knn"]
    assert knn["protocol"]["k"] == n_train and knn["protocol"]["k_requested"] == 100000
    # the clamped k gives the same accuracy as asking for it
    same = evaluate_checkpoint(run, device="cpu", knn_k=n_train, write=False, out=io.StringIO())
    assert same["knn_top1"] == result["knn_top1"] and "k_requested" not in same["knn_protocol"]


def test_few_labels_below_one_per_class_are_refused_before_any_work(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("features were extracted before the fraction was checked")

    monkeypatch.setattr(evaluate_module, "extract_features", boom)
    with pytest.raises(ConfigError, match=r"label fraction 0\.01 .* is 2 image\(s\) for 10 classes") as info:
        evaluate_checkpoint(run, device="cpu", limit=200, few_label=(0.01,), out=io.StringIO())
    message = str(info.value)
    m = re.search(r"at least (\S+) \((\d+) images\)", message)
    assert m and m.group(2) == "10"
    n_train = 200  # --limit 200 of digits: 20 a class
    assert smallest_that_works(float(m.group(1)), n_train, 10)  # 0.0475: round(9.5) is 10
    assert not (run / "metrics.json").read_text().count('"evaluation"')  # nothing written
    assert main(["eval", str(run), "--few-label", "0.01", "--limit", "200", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contrastkit: error:") and "fewer than one per class" in err and "\n" not in err


def smallest_that_works(fraction: float, n: int, needed: int) -> bool:
    """Whether ``fraction`` gives a subset of at least ``needed`` of ``n`` images (as few_label_subset sizes
    it) and the 3-significant-digit fraction just below it does not."""
    below = float(f"{fraction - 10 ** (math.floor(math.log10(fraction)) - 2):.3g}")
    return max(1, round(fraction * n)) >= needed > max(1, round(below * n))


def test_a_fraction_too_small_for_batchnorm_is_refused_before_any_work_with_the_smallest_that_works(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """0.001 of digits' 1347 training images is 1 image: below one per class and below BatchNorm's 2. One
    message, up front, names the smallest fraction meeting both (not fine-tuning's error after the kNN)."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("work was done before the fraction was checked")

    monkeypatch.setattr(evaluate_module, "extract_features", boom)
    monkeypatch.setattr(evaluate_module, "finetune_few_labels", boom)
    before = (run / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["eval", str(run), "--few-label", "0.001", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert (
        captured.out == "" and (run / "metrics.json").read_bytes() == before
    )  # nothing evaluated or written
    assert err.startswith(
        "contrastkit: error: label fraction 0.001 of the 1347 labelled training images is 1"
    )
    assert "fewer than one per class" in err and "at least 2 images (BatchNorm)" in err and "\n" not in err
    m = re.search(r"at least (\S+) \((\d+) images\)", err)
    assert m and m.group(2) == "10" and smallest_that_works(float(m.group(1)), 1347, 10)
    # a fraction meeting the class rule but not BatchNorm's (one class): the same message names 2 images
    with pytest.raises(ConfigError, match=r"1 image\(s\) for 1 class, fine-tuning needs at least 2") as info:
        check_label_fractions(torch.zeros(100, dtype=torch.long), [0.01])
    m = re.search(r"at least (\S+) \(2 images\)", str(info.value))
    assert m and smallest_that_works(float(m.group(1)), 100, 2) and "per class" not in str(info.value)
    with pytest.raises(ConfigError, match="Even all of them is too few"):
        check_label_fractions(torch.zeros(1, dtype=torch.long), [1.0])


def test_check_label_fractions_and_finetune_refuse_a_subset_missing_classes() -> None:
    labels = torch.arange(10).repeat(20)  # 200 images, 10 classes
    check_label_fractions(labels, [0.05, 0.5, 0.0475])  # 10, 100 and 10 (round(9.5)) images: fine
    with pytest.raises(
        ConfigError, match=r"0\.02 .* 4 image\(s\) for 10 classes.*at least 0\.0475 \(10 images\)"
    ):
        check_label_fractions(labels, [0.5, 0.02])
    images = torch.zeros(200, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="fewer than one per class"):
        finetune_few_labels(
            torch.nn.Flatten(), images, labels, images[:10], labels[:10], fractions=[0.5, 0.02]
        )


def test_eval_on_other_data_is_kept_apart_from_the_runs_own(run: Path, tmp_path: Path) -> None:
    folder = gray_folder(tmp_path / "other", ("a", "b"))
    evaluate_checkpoint(run, device="cpu", out=io.StringIO())
    own = json.loads((run / "metrics.json").read_text())["evaluation"]["knn"]
    printed = io.StringIO()
    evaluate_checkpoint(run, device="cpu", data=str(folder), linear_probe=True, out=printed)
    assert f'"other_data" > "{folder}"' in printed.getvalue()
    evaluation = json.loads((run / "metrics.json").read_text())["evaluation"]
    assert evaluation["knn"] == own and "linear_probe" not in evaluation  # the run's own data untouched
    other = evaluation["other_data"][str(folder)]
    assert set(other) == {"knn", "linear_probe"}
    assert other["knn"]["data"] == other["linear_probe"]["data"] == str(folder)
    # the run's own data again: the other data's results stay where they are
    evaluate_checkpoint(run, device="cpu", linear_probe=True, out=io.StringIO())
    evaluation = json.loads((run / "metrics.json").read_text())["evaluation"]
    assert evaluation["linear_probe"]["data"] == evaluation["knn"]["data"] == "digits"
    assert set(evaluation["other_data"][str(folder)]) == {"knn", "linear_probe"}
    # the same data named by its path (another spelling) is the run's own
    assert evaluate_module._same_data(str(run / ".." / "run"), str(run))


def test_merge_moves_old_top_level_entries_of_other_data_apart(tmp_path: Path) -> None:
    """Older versions wrote every eval at the top level: a file mixing data sets is sorted on the next eval."""
    mixed = {
        "knn_top1": 0.9,
        "evaluation": {
            "knn": {"top1": 0.1, "data": "other.zip"},
            "linear_probe": {"top1": 0.8, "data": "digits"},
            "few_label": {"0.1": {"top1": 0.5, "data": "other.zip"}, "0.5": {"top1": 0.7, "data": "digits"}},
        },
    }
    (tmp_path / "metrics.json").write_text(json.dumps(mixed))
    merge_evaluation(tmp_path, {"knn": {"top1": 0.95, "data": "digits"}})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ev = metrics["evaluation"]
    assert metrics["knn_top1"] == 0.9
    assert ev["knn"] == {"top1": 0.95, "data": "digits"} and ev["linear_probe"]["data"] == "digits"
    assert ev["few_label"] == {"0.5": {"top1": 0.7, "data": "digits"}}
    assert ev["other_data"]["other.zip"] == {
        "knn": {"top1": 0.1, "data": "other.zip"},
        "few_label": {"0.1": {"top1": 0.5, "data": "other.zip"}},
    }


def test_merge_of_other_data_takes_its_old_top_level_entries_along(tmp_path: Path) -> None:
    mixed = {"evaluation": {"knn": {"top1": 0.9, "data": "digits"}, "geometry": {"data": "b.zip", "x": 1}}}
    (tmp_path / "metrics.json").write_text(json.dumps(mixed))
    merge_evaluation(tmp_path, {"knn": {"top1": 0.2, "data": "b.zip"}}, data_key="b.zip")
    ev = json.loads((tmp_path / "metrics.json").read_text())["evaluation"]
    assert ev["knn"] == {"top1": 0.9, "data": "digits"} and "geometry" not in ev
    assert ev["other_data"]["b.zip"] == {
        "geometry": {"data": "b.zip", "x": 1},
        "knn": {"top1": 0.2, "data": "b.zip"},
    }


def test_one_class_data_warns_that_knn_is_meaningless(run: Path, tmp_path: Path) -> None:
    folder = gray_folder(tmp_path / "one", ("only",))
    printed = io.StringIO()
    result = evaluate_checkpoint(run, device="cpu", data=str(folder), out=printed)
    assert result["knn_top1"] == 1.0
    text = printed.getvalue()
    assert "WARNING:" in text and "single class ('only')" in text and "meaningless" in text
    knn = json.loads((run / "metrics.json").read_text())["evaluation"]["other_data"][str(folder)]["knn"]
    assert any("single class" in w for w in knn["warnings"])


def test_eval_names_its_image_counts_and_a_limit_other_than_the_runs(run: Path) -> None:
    """A run trained with --limit 200, evaluated without --limit: eval takes every image (its default), and
    says so with the counts and the flag that evaluates as trained; with --limit 200 there is no note."""
    printed = io.StringIO()
    knn = evaluate_checkpoint(run, device="cpu", out=printed)["evaluation"]["knn"]
    first, text = printed.getvalue().splitlines()[0], printed.getvalue()
    counts = f"({knn['train_images']} train / {knn['eval_images']} eval images [test split])"
    assert counts in first and (knn["train_images"], knn["eval_images"]) == (1347, 450)
    assert "NOTE: the run trained with --limit 200 (images per split)" in text and "pass --limit 200" in text
    assert knn["protocol"]["eval_split"] == knn["eval_split"] == "test split"  # not the NOTE's text
    printed = io.StringIO()
    knn = evaluate_checkpoint(run, device="cpu", limit=200, out=printed)["evaluation"]["knn"]
    first, text = printed.getvalue().splitlines()[0], printed.getvalue()
    counts = f"({knn['train_images']} train / {knn['eval_images']} eval images [test split], --limit 200)"
    assert counts in first and knn["train_images"] == 200 and "NOTE" not in text


def test_runs_of_two_seeds_are_probed_and_fine_tuned_on_the_same_labels(tmp_path: Path) -> None:
    """--split-seed (0 for both) seeds the probe's held-out part and the few-label subsets; --seed does not."""
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        config = TrainConfig(
            epochs=1,
            batch_size=64,
            limit=200,
            knn_every=0,
            progress=False,
            device="cpu",
            seed=seed,
            out=str(out),
        )
        train(config, out=io.StringIO())
        result = evaluate_checkpoint(out, device="cpu", linear_probe=True, few_label="0.1", out=io.StringIO())
        runs.append(result["evaluation"])
    for ev in runs:
        assert ev["linear_probe"]["protocol"]["seed"] == 0
        assert ev["few_label"]["0.1"]["protocol"]["subset"].startswith("class-balanced, seed 0,")


def test_few_label_on_other_data_takes_that_datas_classes(tmp_path: Path) -> None:
    """A 3-class run fine-tuned on the 10 digits classes failed after its kNN and probe ('num_classes is
    3 but the labels go up to 9'), writing nothing: the head took the run's classes, not the data's."""
    folder = gray_folder(tmp_path / "three", ("a", "b", "c"), per_class=24)
    out = tmp_path / "run3"
    train(
        TrainConfig(data=str(folder), epochs=1, batch_size=16, knn_every=0, knn_k=5, progress=False,
                    device="cpu", out=str(out)),
        out=io.StringIO(),
    )  # fmt: skip
    evaluate_checkpoint(out, data="digits", limit=100, few_label=[0.5], device="cpu", out=io.StringIO())
    other = json.loads((out / "metrics.json").read_text())["evaluation"]["other_data"]["digits"]
    assert set(other) == {"knn", "few_label"} and 0 <= other["few_label"]["0.5"]["top1"] <= 1
