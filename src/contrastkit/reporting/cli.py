"""The ``report``, ``embed`` and ``export`` sub-commands (registered by :mod:`contrastkit.cli`)."""

from __future__ import annotations

import argparse
from typing import Any

COMMANDS = ("report", "embed", "export")


def add_parsers(sub: Any) -> None:
    """Add the three sub-parsers to ``sub`` (the ``add_subparsers`` object of the main parser)."""
    rep = sub.add_parser(
        "report",
        help="write report.html (curves, embedding map, retrieval grid, metrics, config) into a run folder",
        description="Write a self-contained report.html and its figures as PNGs into the run folder: loss and "
        "kNN top-1 against steps and wall-clock, a t-SNE map of the test embeddings, a retrieval grid, the "
        "metrics and the resolved config.",
    )
    rep.add_argument("run", metavar="RUN", help="a run folder written by contrastkit train")
    rep.add_argument("--data", metavar="digits|PATH", help="data for the map and grid (default: as trained)")
    rep.add_argument(
        "--limit", type=int, metavar="N", help="use at most N images per split (default: as trained)"
    )
    rep.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    rep.add_argument(
        "--map-points",
        type=int,
        default=2000,
        metavar="N",
        help="test images in the t-SNE map (default: 2000)",
    )
    rep.add_argument(
        "--pool",
        type=int,
        default=10000,
        metavar="N",
        help="training images searched by the grid (default: 10000)",
    )
    rep.add_argument(
        "--queries", type=int, default=8, metavar="N", help="rows of the retrieval grid (default: 8)"
    )
    rep.add_argument(
        "--neighbours", type=int, default=8, metavar="N", help="neighbours per query (default: 8)"
    )
    rep.add_argument("--seed", type=int, default=0, help="seed of the subsets and of t-SNE (default: 0)")

    emb = sub.add_parser(
        "embed",
        help="export backbone embeddings of every image with its file name (.npz, .npy or .parquet)",
        description="Embed every image of the data (train and test splits, or every image of a plain folder "
        "or zip) with the run's backbone. FILE's suffix picks the format: .npz (embeddings, names, splits, "
        "labels, classes), .npy (+ FILE.tsv with the names), .parquet (columns name, split, label, class, "
        "embedding).",
    )
    emb.add_argument("run", metavar="RUN", help="a run folder or checkpoint.pt")
    emb.add_argument("--data", metavar="digits|PATH", help="images to embed (default: the training data)")
    emb.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="output file: .npz, .npy or .parquet (an existing FILE is refused unless --overwrite)",
    )
    emb.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing FILE (and FILE.tsv for .npy), atomically (default: refuse it)",
    )
    emb.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    emb.add_argument(
        "--normalize", action=argparse.BooleanOptionalAction, default=False, help="L2-normalise (default: no)"
    )

    exp = sub.add_parser(
        "export",
        help="write the backbone as safetensors, loadable into a plain nn.Module",
        description="Write the trained backbone's weights as safetensors with its architecture, constructor "
        "arguments and input normalisation in the metadata (and in FILE.json); load it with "
        "contrastkit.export.load_backbone(FILE).",
    )
    exp.add_argument("run", metavar="RUN", help="a run folder or checkpoint.pt")
    exp.add_argument(
        "--out",
        metavar="FILE",
        help="output .safetensors file (default: RUN/backbone.safetensors); an existing one is refused "
        "unless --overwrite",
    )
    exp.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing FILE and FILE.json, atomically (default: refuse them)",
    )


def run_command(args: argparse.Namespace) -> None:
    """Run the sub-command ``args.command`` (one of :data:`COMMANDS`)."""
    if args.command == "report":
        from contrastkit.reporting.report import write_report

        write_report(
            args.run,
            data=args.data,
            device=args.device,
            limit=args.limit,
            map_points=args.map_points,
            pool=args.pool,
            queries=args.queries,
            neighbours=args.neighbours,
            seed=args.seed,
        )
    elif args.command == "embed":
        from contrastkit.embed import embed_run

        embed_run(
            args.run,
            args.out,
            args.data,
            device=args.device,
            normalize=args.normalize,
            overwrite=args.overwrite,
        )
    elif args.command == "export":
        from contrastkit.export import export_backbone

        export_backbone(args.run, args.out, overwrite=args.overwrite)
    else:  # pragma: no cover - argparse only lets the registered names through
        raise ValueError(f"not a reporting command: {args.command}")
