"""``contrastkit report``: the page, its figures, its fallbacks, and that it renders in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.cli import main
from contrastkit.reporting import write_report
from contrastkit.reporting.figures import (
    WRONG,
    embedding_map,
    figure_png,
    nearest_neighbours,
    plot_retrieval,
)
from contrastkit.reporting.html import render_value

CHROMIUM = "/usr/bin/chromium"
FIGURE_IDS = ("fig-loss", "fig-knn", "fig-scalars", "fig-embedding", "fig-retrieval")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Sections (by id) with their text and <img> sources; every src/href; tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, list[str]]] = {}
        self.current: str | None = None
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.imgs: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.current = a.get("id") or ""
            self.sections[self.current] = {"imgs": [], "text": []}
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(a[key] or "")
        if tag == "img":
            self.imgs.append(a)
            if self.current is not None:
                self.sections[self.current]["imgs"].append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.current is not None:
            self.sections[self.current]["text"].append(data)

    def text(self, section: str) -> str:
        return " ".join(self.sections[section]["text"])


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def decode_png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data.startswith(PNG_MAGIC)
    return data


@pytest.fixture(scope="module")
def report(trained_run: Path):
    return write_report(trained_run, device="cpu", map_points=150, queries=4, neighbours=5, out=io.StringIO())


def test_every_figure_is_embedded_as_a_valid_png_and_written_beside_the_page(report) -> None:
    page = parse(report.html)
    assert set(report.figures) == set(FIGURE_IDS)
    for fig_id in FIGURE_IDS:
        assert fig_id in page.sections, f"section {fig_id} missing"
        (src,) = page.sections[fig_id]["imgs"]
        png = decode_png(src)
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
        with Image.open(io.BytesIO(png)) as im:
            assert im.width > 100 and im.height > 100
        assert report.figures[fig_id].read_bytes() == png  # the PNG file beside the page is the same image
        assert report.figures[fig_id].parent == report.html.parent


def test_page_is_self_contained(report) -> None:
    html = report.html.read_text(encoding="utf-8")
    page = parse(report.html)
    assert "script" not in page.tags and "link" not in page.tags  # no JS, no external CSS
    for link in page.links:
        assert link.startswith(("data:image/png;base64,", "#")), link[:80]
    assert not re.search(r"url\(|@import|https?://", html)


def test_metrics_and_config_sections(report, trained_run: Path) -> None:
    page = parse(report.html)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    text = page.text("metrics")
    for key in metrics:
        assert key in text
    for key in metrics["knn_protocol"]:
        assert key in text
    for point in metrics["knn_curve"]:  # the list of dicts becomes a table with one row per point
        assert f"{point['knn_top1']:.6g}" in text
    config_text = (trained_run / "config.yaml").read_text()
    assert " ".join(config_text.split()) in " ".join(page.text("config").split())


def test_retrieval_caption_counts_the_neighbours_of_each_query(report) -> None:
    caption = parse(report.html).text("fig-retrieval")
    m = re.search(r"(\d+) of (\d+) neighbours shown", caption)
    assert m and int(m.group(2)) == 4 * 5 and int(m.group(1)) <= 20


def test_evaluation_section_of_metrics_is_rendered_generically(run_copy: Path) -> None:
    path = run_copy / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["evaluation"] = {
        "linear_probe": {"top1": 0.8125, "protocol": {"weight_decay": 0.0001, "standardised": True}},
        "few_label": [{"fraction": 0.01, "top1": 0.5}, {"fraction": 0.1, "top1": 0.75}],
    }
    path.write_text(json.dumps(metrics))
    result = write_report(run_copy, device="cpu", map_points=50, queries=2, neighbours=2, out=io.StringIO())
    text = parse(result.html).text("metrics")
    for word in ("evaluation", "linear_probe", "protocol", "weight_decay", "0.0001", "0.8125", "few_label"):
        assert word in text


def test_render_value_nests_tables_to_any_depth() -> None:
    html = render_value({"a": {"b": {"c": 1.5}}, "l": [1, 2], "s": "<x>", "n": None, "f": float("nan")})
    page = Page()
    page.feed(html)
    assert html.count("<table>") == 3
    assert "&lt;x&gt;" in html and "<x>" not in html
    assert "1.5" in html and "1, 2" in html and "null" in html and "NaN" in html


def test_missing_history_gives_an_unavailable_loss_panel(run_copy: Path) -> None:
    (run_copy / "history.jsonl").unlink()
    result = write_report(run_copy, device="cpu", map_points=50, queries=2, neighbours=2, out=io.StringIO())
    page = parse(result.html)
    assert "unavailable" in page.text("fig-loss")
    assert "fig-scalars" not in result.figures and "fig-scalars" not in page.sections
    for fig_id in ("fig-loss", "fig-knn", "fig-embedding", "fig-retrieval"):
        decode_png(page.sections[fig_id]["imgs"][0])


def test_run_without_checkpoint_still_gets_curves_and_a_note(run_copy: Path) -> None:
    # an earlier report's figures that this one cannot draw are kept (perhaps the only copy) but named
    for name in ("report_embedding.png", "report_retrieval.png"):
        (run_copy / name).write_bytes(b"an earlier report's figure")
    (run_copy / "checkpoint.pt").unlink()
    printed = io.StringIO()
    result = write_report(run_copy, device="cpu", out=printed)
    assert (run_copy / "report_embedding.png").read_bytes() == b"an earlier report's figure"
    stale = "report_embedding.png, report_retrieval.png beside the page are an earlier report"
    assert (
        stale in printed.getvalue()
        and stale in result.html.read_text()
        and any(stale in n for n in result.notes)
    )
    page = parse(result.html)
    assert {"fig-loss", "fig-knn"} <= set(result.figures)
    assert "fig-embedding" not in result.figures and "fig-retrieval" not in result.figures
    assert any("checkpoint.pt" in n for n in result.notes)
    assert "checkpoint.pt" in result.html.read_text()
    assert "metrics" in page.sections and "config" in page.sections


def test_unreadable_checkpoint_is_noted_not_fatal(run_copy: Path) -> None:
    (run_copy / "checkpoint.pt").write_bytes(b"cut off mid-write")
    result = write_report(run_copy, device="cpu", out=io.StringIO())
    assert set(result.figures) == {"fig-loss", "fig-knn", "fig-scalars"}
    assert any("cannot be read" in n for n in result.notes)


def test_truncated_history_line_is_skipped(run_copy: Path) -> None:
    path = run_copy / "history.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines) + '\n{"step": 99, "lo')  # a line cut off by a killed run
    result = write_report(run_copy, device="cpu", map_points=50, queries=2, neighbours=2, out=io.StringIO())
    assert f"Training loss of {len(lines)} logged steps" in parse(result.html).text("fig-loss")


def test_nearest_neighbours_match_scikit_learn() -> None:
    from sklearn.neighbors import NearestNeighbors

    g = torch.Generator().manual_seed(0)
    keys, queries = torch.randn(200, 16, generator=g), torch.randn(7, 16, generator=g)
    idx, sims = nearest_neighbours(queries, keys, 6)
    dist, ref = NearestNeighbors(n_neighbors=6, metric="cosine").fit(keys.numpy()).kneighbors(queries.numpy())
    np.testing.assert_array_equal(idx.numpy(), ref)
    np.testing.assert_allclose(sims.numpy(), 1 - dist, atol=1e-5)


def _has_wrong_colour(png: bytes) -> bool:
    target = np.array([int(WRONG[i : i + 2], 16) for i in (1, 3, 5)])
    with Image.open(io.BytesIO(png)) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    return bool((np.abs(pixels - target).max(axis=1) <= 8).any())


@pytest.mark.parametrize("wrong", [False, True])
def test_retrieval_grid_marks_wrong_class_neighbours_red(wrong: bool) -> None:
    images = torch.full((2, 3, 1, 8, 8), 128, dtype=torch.uint8)
    labels = [[0, 0, 1 if wrong else 0], [1, 1, 1]]
    fig = plot_retrieval(images[:, 0], [0, 1], images, labels, torch.ones(2, 3), ["a", "b"])
    assert _has_wrong_colour(figure_png(fig)) == wrong


def test_embedding_map_is_seeded_and_keeps_clusters_apart() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 64, generator=g) * 4
    labels = torch.arange(3).repeat_interleave(40)
    feats = centres[labels] + torch.randn(120, 64, generator=g)
    a, b = embedding_map(feats, seed=3), embedding_map(feats, seed=3)
    assert a.shape == (120, 2)
    np.testing.assert_array_equal(a, b)
    clf = KNeighborsClassifier(5).fit(a[::2], labels[::2].numpy())
    assert clf.score(a[1::2], labels[1::2].numpy()) >= 0.95


def test_cli_report_and_its_errors(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["report", str(run_copy), "--device", "cpu", "--map-points", "40", "--queries", "2"]
    assert main([*args, "--neighbours", "3"]) == 0
    assert "wrote" in capsys.readouterr().out and (run_copy / "report.html").is_file()
    for bad, words in (
        (["report", str(run_copy / "nope")], "does not exist"),
        ([*args, "--neighbours", "0"], "neighbours must be a positive integer"),
        ([*args, "--data", str(run_copy / "missing.zip")], "does not exist"),
    ):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("contrastkit: error:") and words in err and "\n" not in err
    empty = run_copy.parent / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- channels


def digit_folder(root: Path, mode: str, limit: int = 60) -> Path:
    """``limit`` digits as 8x8 PNGs under ``root/train/<class>/``: grayscale (``L``) or RGB (``RGB``, three
    different channels)."""
    from contrastkit.data import load_dataset

    digits = load_dataset("digits", limit=limit).train
    for i, (img, label) in enumerate(zip(digits.images, digits.labels.tolist(), strict=True)):
        g = img[0].numpy()
        array = g if mode == "L" else np.stack([g, 255 - g, g // 2], axis=2)
        (root / "train" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / "train" / str(label) / f"{i:03d}.png")
    return root


def test_grayscale_data_for_an_rgb_run_is_repeated_with_a_warning(tmp_path: Path) -> None:
    from contrastkit.training import TrainConfig, train

    config = TrainConfig(
        data=str(digit_folder(tmp_path / "rgb", "RGB")), epochs=1, batch_size=16, knn_every=0,
        progress=False, device="cpu", out=str(tmp_path / "run"),
    )  # fmt: skip
    run = train(config, out=io.StringIO()).run_dir
    gray = digit_folder(tmp_path / "gray", "L")
    printed = io.StringIO()
    result = write_report(run, data=str(gray), device="cpu", queries=2, neighbours=3, out=printed)
    [note] = [n for n in result.notes if "channel" in n]
    assert f"{str(gray)!r} has grayscale (1-channel) images" in note and "repeated to 3" in note
    assert "takes RGB (3-channel) images" in note
    assert f"WARNING: {note}" in printed.getvalue()
    page = parse(result.html)
    assert "fig-embedding" in page.sections and "fig-retrieval" in page.sections
    assert "repeated to 3" in result.html.read_text(encoding="utf-8")


def test_rgb_data_for_a_grayscale_run_is_an_error_naming_both_channel_counts(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rgb = digit_folder(tmp_path / "rgb", "RGB")
    assert main(["report", str(trained_run), "--device", "cpu", "--data", str(rgb)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contrastkit: error:") and "\n" not in err
    assert "takes 1-channel images (grayscale)" in err and f"{str(rgb)!r} has 3-channel images (RGB)" in err
    assert "convert them to grayscale" in err


# ------------------------------------------------------------------------------------------- browser


def chromium() -> str:
    """Chromium's path; a clear failure when it is missing (it is installed by ./dev.sh test)."""
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.environ.get("CONTRASTKIT_SKIP_BROWSER") == "1":
        pytest.skip("CONTRASTKIT_SKIP_BROWSER=1: headless Chromium check skipped")
    pytest.fail(
        f"{CHROMIUM} is missing: `./dev.sh test` installs it from Debian's packages (apt-get install "
        "chromium); install it, or set CONTRASTKIT_SKIP_BROWSER=1 to skip this test"
    )


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_report_renders_in_headless_chromium(report, tmp_path: Path) -> None:
    shot = tmp_path / "screenshot.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", report.html.resolve().as_uri())
    assert shot.is_file()
    with Image.open(shot) as im:
        assert im.size == (1400, 3000)
        gray = np.asarray(im.convert("L"), dtype=np.float64)
    assert gray.std() > 20, "the screenshot is (nearly) blank"
    assert (gray < 200).mean() > 0.02, "the screenshot shows almost nothing but background"

    # the rendered DOM: every figure's <img> decoded by the browser at the PNG's own size
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => { for (const i of document.images) "
        "i.setAttribute('data-natural', i.naturalWidth + 'x' + i.naturalHeight); });</script>"
    )
    probe.write_text(report.html.read_text(encoding="utf-8").replace("</body>", script + "</body>"))
    dom = run_chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()).stdout
    rendered = Page()
    rendered.feed(dom)
    assert set(FIGURE_IDS) <= set(rendered.sections)
    for fig_id in FIGURE_IDS:
        (src,) = rendered.sections[fig_id]["imgs"]
        img = next(i for i in rendered.imgs if i.get("src") == src)
        with Image.open(io.BytesIO(decode_png(src))) as im:
            assert img.get("data-natural") == f"{im.width}x{im.height}", fig_id
