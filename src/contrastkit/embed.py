"""``contrastkit embed RUN --data PATH --out FILE``: backbone embeddings of every image, with file names.

The data is ``digits``, a folder or ``.zip`` laid out as ``train/<class>/*`` (+ ``test/<class>/*``), whose
train and test images are all embedded with their split and label, or any other folder or ``.zip`` of
images (searched recursively; split ``"all"``, label -1). Images are resized to the size the encoder was
trained at and normalised with its training statistics. The output format follows the suffix of FILE:

- ``.npz``: arrays ``embeddings`` (N, D) float32, ``names``, ``splits``, ``labels`` (int64, -1 unknown)
  and ``classes`` (``np.load(FILE)`` reads it; no pickle needed);
- ``.npy``: the ``embeddings`` array, with a tab-separated ``FILE.tsv`` beside it (index, name, split,
  label, class), row ``i`` describing embedding ``i``;
- ``.parquet``: columns ``name``, ``split``, ``label``, ``class`` and ``embedding`` (a fixed-size list of
  float32), plus the run's details in the schema metadata (key ``contrastkit``); needs ``pyarrow``.

Names are the images' paths relative to the folder (or inside the zip), e.g. ``train/cat/0001.png``.

An existing output file (or the ``.npy``'s ``.tsv`` beside it) is refused before any work unless
``overwrite`` (``--overwrite``) is given; then it is replaced atomically (a temporary file renamed over
it), so a failure leaves the previous file whole.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.errors import ConfigError, ContrastkitError
from contrastkit.training.checkpoint import check_output_folder, write_atomic

__all__ = ["FORMATS", "Embeddings", "compute_embeddings", "embed_run", "write_embeddings"]

FORMATS = (".npz", ".npy", ".parquet")


@dataclass
class Embeddings:
    """Embeddings ``(N, D)`` float32 and, for each row, the image's name, split and label."""

    embeddings: np.ndarray
    names: list[str]
    splits: list[str]
    labels: np.ndarray
    classes: list[str]
    meta: dict[str, Any]

    def class_names(self) -> list[str]:
        """The class name of each row ("" where the label is unknown)."""
        return [self.classes[i] if 0 <= i < len(self.classes) else "" for i in self.labels.tolist()]


def _outputs(target: Path) -> list[Path]:
    """The files written for output file ``target``: itself, and the index beside a ``.npy``."""
    if target.suffix.lower() == ".npy":
        return [target, target.with_name(target.name + ".tsv")]
    return [target]


def _check_out(out_path: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output file name whose format is unknown, that is a folder, whose folder
    cannot be written, or that exists (unless ``overwrite``)."""
    target = Path(out_path)
    if target.suffix.lower() not in FORMATS:
        raise ConfigError(
            f"cannot tell the format of {str(target)!r} from its suffix; end the file name in one of "
            f"{', '.join(FORMATS)}"
        )
    if target.is_dir():
        raise ConfigError(f"{str(target)!r} is a folder; give a file name ending in {target.suffix}")
    check_output_folder(target)  # exists, is a folder, is writable
    for path in _outputs(target)[1:]:
        if path.is_dir():
            raise ConfigError(
                f"{str(path)!r} is a folder, so the index of {str(target)!r} cannot be written beside it; "
                "give another --out"
            )
    if not overwrite:
        for path in _outputs(target):
            if path.exists():
                raise ConfigError(
                    f"{str(path)!r} already exists; give another --out, or pass --overwrite to replace it"
                )
    return target


def compute_embeddings(
    run: str | Path,
    data: str | None = None,
    *,
    device: str = "auto",
    normalize: bool = False,
    out: Any = None,
) -> Embeddings:
    """Embed every image of ``data`` (default: the data the run was trained on) with the run's backbone.

    Grayscale images for an RGB encoder are repeated to three channels, with a ``NOTE:`` line on ``out``
    (default: standard output) and the note in ``meta["notes"]``; RGB images for a grayscale encoder are an
    error (:func:`contrastkit.reporting.run.fit_channels`).
    """
    from contrastkit.data import has_split_layout, load_dataset, load_image_files
    from contrastkit.reporting.run import backbone_features, fit_channels, load_trained_run

    out = out or sys.stdout
    from contrastkit.training.checkpoint import refuse_nonfinite_model

    trained = load_trained_run(run, device)
    refuse_nonfinite_model(trained.model, trained.checkpoint)  # before decoding and embedding the data
    interrupted = trained.interrupted_warning("embed again")
    if interrupted is not None:
        print(f"WARNING: {interrupted}", file=out, flush=True)
    spec = str(data) if data is not None else trained.config.data
    size = trained.info.image_size
    if spec == "digits" or has_split_layout(spec):
        splits = load_dataset(spec, image_size=size, seed=trained.config.split_seed)  # the run's split
        parts = [("train", splits.train), ("test", splits.test)]
        layout = "train/test splits"
    else:
        parts = [("all", load_image_files(spec, image_size=size))]
        layout = "plain folder"
    feats, names, split_names, labels = [], [], [], []
    classes: list[str] = []
    notes: list[str] = []
    for split, ds in parts:
        if ds is None or len(ds) == 0:
            continue
        classes = classes or list(ds.classes)
        images, note = fit_channels(trained, ds.images, repr(spec))  # before embedding any split
        if note is not None and note not in notes:
            notes.append(note)
            print(f"NOTE: {note}", file=out, flush=True)
        f = backbone_features(trained, images)
        if normalize:
            f = torch.nn.functional.normalize(f, dim=1)
        feats.append(f)
        names.extend(ds.names)
        split_names.extend([split] * len(ds))
        labels.append(ds.labels)
    meta = {
        "run": str(trained.checkpoint.parent),
        "checkpoint": str(trained.checkpoint),
        "architecture": trained.encoder,
        "feature_dim": int(trained.model.feature_dim),
        "data": spec,
        "layout": layout,
        "image_size": size,
        "normalized": normalize,
        "features": "backbone f(x), " + ("L2-normalised" if normalize else "not normalised"),
        "training": trained.progress,  # finished, trained_steps, total_steps of the checkpoint
        **({"notes": notes} if notes else {}),
        **({"warnings": [interrupted]} if interrupted is not None else {}),
    }
    return Embeddings(
        embeddings=torch.cat(feats).numpy().astype(np.float32, copy=False),
        names=names,
        splits=split_names,
        labels=torch.cat(labels).numpy().astype(np.int64, copy=False),
        classes=classes,
        meta=meta,
    )


def write_embeddings(emb: Embeddings, out_path: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``emb`` in the format of ``out_path``'s suffix; returns the files written.

    An existing file is refused (:class:`ConfigError`) unless ``overwrite``; then it is replaced atomically.
    """
    target = _check_out(out_path, overwrite=overwrite)
    suffix = target.suffix.lower()
    if suffix == ".npz":
        arrays = dict(
            embeddings=emb.embeddings,
            names=np.asarray(emb.names, dtype=str),
            splits=np.asarray(emb.splits, dtype=str),
            labels=emb.labels,
            classes=np.asarray(emb.classes, dtype=str),
        )
        write_atomic(target, lambda f: np.savez(f, **arrays))
        return [target]
    if suffix == ".npy":
        write_atomic(target, lambda f: np.save(f, emb.embeddings))
        index = target.with_name(target.name + ".tsv")

        def write_index(f: Any) -> None:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["index", "name", "split", "label", "class"])
            for i, row in enumerate(zip(emb.names, emb.splits, emb.labels.tolist(), emb.class_names())):
                w.writerow([i, *row])

        write_atomic(index, write_index, binary=False)
        return [target, index]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ContrastkitError(
            "writing .parquet needs pyarrow: pip install pyarrow (or contrastkit[parquet]), or use .npz"
        ) from None
    d = emb.embeddings.shape[1]
    values = pa.array(emb.embeddings.reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "name": pa.array(emb.names, type=pa.string()),
            "split": pa.array(emb.splits, type=pa.string()),
            "label": pa.array(emb.labels, type=pa.int64()),
            "class": pa.array([c or None for c in emb.class_names()], type=pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(values, d),
        }
    )
    table = table.replace_schema_metadata({"contrastkit": json.dumps({**emb.meta, "classes": emb.classes})})
    write_atomic(target, lambda f: pq.write_table(table, f))
    return [target]


def embed_run(
    run: str | Path,
    out_path: str | Path,
    data: str | None = None,
    *,
    device: str = "auto",
    normalize: bool = False,
    overwrite: bool = False,
    out: Any = None,
) -> Embeddings:
    """Compute the embeddings (:func:`compute_embeddings`) and write them (:func:`write_embeddings`).

    The output file name is checked first (format, folder, and that no file of that name exists unless
    ``overwrite``), so a bad ``out_path`` is refused before the model is loaded or any image decoded.
    """
    out = out or sys.stdout
    _check_out(out_path, overwrite=overwrite)  # fail before the work, not after
    emb = compute_embeddings(run, data, device=device, normalize=normalize, out=out)
    written = write_embeddings(emb, out_path, overwrite=overwrite)
    n, d = emb.embeddings.shape
    counts = ", ".join(f"{s} {emb.splits.count(s)}" for s in dict.fromkeys(emb.splits))
    print(
        f"embedded {n} images ({counts}) of {emb.meta['data']} into {d} dimensions; "
        f"wrote {', '.join(map(str, written))}",
        file=out,
    )
    return emb
