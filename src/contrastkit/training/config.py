"""The training configuration: one dataclass, the single source of defaults, help texts and checks.

The command line builds its flags from these fields; a TOML or YAML file may set any of them; flags win
over the file, the file over the defaults. The resolved configuration is written into every run folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from contrastkit.errors import ConfigError
from contrastkit.negatives import NEGATIVES
from contrastkit.negatives.mined import INDEX_CHOICES
from contrastkit.training.options import (
    check_seed,
    objective_unused,
    small_queue_warnings,
    unused_option_warnings,
    used_only_by,
)
from contrastkit.training.precision import PRECISIONS
from contrastkit.views.image import RECIPES

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


MAX_CONSECUTIVE_SKIPS = 20  # --skip-nonfinite gives up after this many non-finite steps in a row


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    # data
    data: str = _opt("digits", "'digits' (embedded, 1,797 8x8 images) or a folder/.zip with train/<class>/*")
    image_size: int | None = _opt(None, "resize images to this square size (default: keep; must all match)")
    limit: int | None = _opt(
        None, "use at most this many images per split (class-balanced, seeded by --split-seed; default: all)"
    )
    data_placement: str = _opt(
        "auto",
        "where the training images live: auto (decoded into GPU memory when they take at most half of what is "
        "free, else host memory with pinned staging buffers) | device | host | stream (read image by image from the folder/zip "
        "in DataLoader workers, for data larger than memory; needs --image-size)",
    )
    workers: int | None = _opt(
        None, "decoding processes of --data-placement stream (default: CPUs - 1, at most 16)"
    )
    knn_images: int = _opt(
        10000,
        "kNN monitor on data that does not sit on the device (stream, or host memory on a GPU): at most this "
        "many train and test images (class-balanced, seeded by --split-seed)",
    )
    # model
    encoder: str = _opt("auto", "resnet18 | resnet50 | small_cnn | mlp | auto (small_cnn below 32 px)")
    stem: str = _opt("auto", "ResNet stem: cifar | imagenet | auto (cifar up to 64 px)")
    proj_hidden_dim: int = _opt(512, "hidden width of the projection head")
    proj_dim: int = _opt(128, "output dimension of the projection head")
    batchnorm: bool = _opt(
        True,
        "BatchNorm in the projection head and the mlp encoder; --no-batchnorm removes it (mlp encoder only: "
        "the CNNs keep theirs). Per-process BN makes torchrun runs on CPU differ from one process",
    )
    # contrast
    objective: str = _opt(
        "infonce",
        "objective that turns scores into a loss: infonce | debiased | hard-negative (alias hcl) | decoupled "
        "| triplet | margin | supcon (supervised: uses the labels)",
    )
    temperature: float = _opt(0.2, "temperature of the objective")
    tau_plus: float = _opt(0.1, "class prior τ+ of the debiased and hard-negative objectives")
    beta: float = _opt(1.0, "hardness β of the hard-negative objective")
    margin: float = _opt(
        0.5,
        "margin of the triplet objective (in score units: s(x,x-) - s(x,x+) + m) and of the margin "
        "objective (a distance on the unit sphere, sqrt(2 - 2s))",
    )
    mining: str = _opt("semi-hard", "negative selection of the triplet objective: all | hardest | semi-hard")
    score: str = _opt("cosine", "similarity score: cosine | dot")
    negatives: str = _opt(
        "in-batch",
        "where negatives come from: in-batch (SimCLR: 2B - 2 an image) | cross-view (SimCSE: the other view's "
        "B - 1, the first view's images as anchors) | queue (MoCo) | gather (the global batch of all "
        "processes, needs torchrun) | mined (ANCE: nearest neighbours in an index of the training set) "
        "| queue+mochi | in-batch+mochi | mined+mochi (MoCHi hard negative mixing) | in-batch+mined (both "
        "sets: the in-batch negatives keep a mined run from collapsing)",
    )
    oracle: bool = _opt(False, "mask same-class negatives using the labels (the DCL 'unbiased' oracle)")
    queue_size: int = _opt(4096, "negatives in the momentum queue (queue, queue+mochi)")
    key_momentum: float | None = _opt(
        None,
        "EMA momentum of the key encoder (MoCo); default 0.99 with a queue source, off otherwise; 0 disables "
        "(the run folder's config.yaml records the value used)",
    )
    shuffle_bn_groups: int = _opt(
        4, "shuffled BatchNorm groups of the key encoder's batch (MoCo Sec. 3.3); 1 disables"
    )
    mix_start_epoch: float = _opt(0, "MoCHi: epochs before mixing starts")
    mix_hardest: int = _opt(
        256,
        "MoCHi N: the hardest negatives of each query that the mixtures draw from (at most the queue or the "
        "batch's negatives, else refused; with mined+mochi capped at --mined-negatives, the mined set being "
        "the hardest already, as the banner says)",
    )
    mix_synthetic: int = _opt(256, "MoCHi s: synthetic negatives per query, mixtures of two of the N hardest")
    mix_query: int = _opt(
        32, "MoCHi s': harder synthetic negatives per query, the query mixed with one of the N (weight < 0.5)"
    )
    mined_negatives: int = _opt(16, "mined: negatives per anchor, its nearest training items in the index")
    mined_refresh_every: int = _opt(
        0, "mined: re-embed the training set and rebuild the index every R steps (0: once per epoch)"
    )
    mined_index: str = _opt(
        "auto",
        "mined: index kind: auto (torch on a GPU; faiss flat on the CPU when faiss is installed, else torch) | "
        "torch (exact inner product in torch, on the training device, no faiss needed) | faiss on the CPU: "
        "flat (exact) | hnsw | ivf (approximate), for sets whose embeddings do not fit on the device",
    )
    mined_reencode: bool = _opt(
        False,
        "mined: encode the mined items (as fresh training views) with the current model, with gradient, as "
        "ANCE does: one more forward and backward of up to 2 x batch x n images per step; off: the index's "
        "detached snapshot embeddings",
    )
    # views
    views: str = _opt(
        "simclr",
        "augmentation recipe: simclr (CIFAR: no blur) | simclr_imagenet | mocov2 (blur) | byol (asymmetric "
        "blur and solarisation); the options below override it",
    )
    crop_min_scale: float | None = _opt(
        None, "random-resized-crop minimum area (default: the recipe's, 0.5 below 32 px)"
    )
    flip_p: float | None = _opt(
        None, "horizontal flip probability (default: the recipe's 0.5; 0 for digits, not mirror-symmetric)"
    )
    jitter: float | None = _opt(
        None,
        "colour jitter strength: brightness, contrast, saturation = J, hue = J/4 (default: the recipe's)",
    )
    jitter_p: float | None = _opt(None, "probability of applying colour jitter (default: the recipe's)")
    grayscale_p: float | None = _opt(
        None, "probability of converting a view to grayscale (default: the recipe's)"
    )
    # optimisation
    epochs: int = _opt(40, "training epochs")
    batch_size: int = _opt(256, "images per batch (each gives two views)")
    optimizer: str = _opt("sgd", "sgd | lars | adamw")
    lr: float | None = _opt(
        None, "peak learning rate (default: sgd 0.06, lars 0.3, adamw 1e-3, times batch/256)"
    )
    weight_decay: float | None = _opt(None, "weight decay (default: sgd 5e-4, lars 1e-6, adamw 0.05)")
    momentum: float = _opt(0.9, "momentum of sgd and lars")
    warmup_epochs: float | None = _opt(
        None, "linear warm-up before the cosine decay (default: a tenth of the epochs)"
    )
    # run
    seed: int = _opt(
        0, "random seed (initialisation, views, the epochs' data order; the split: --split-seed)"
    )
    split_seed: int = _opt(
        0,
        "seed of the data split, independent of --seed: the digits' test split, the part of train held out "
        "when a folder has no test/, and --limit's and --knn-images' subsets, so that runs of several --seed "
        "values share one test set (a run saved before this option keeps its split: its --seed)",
    )
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    precision: str = _opt("auto", "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16")
    compile: bool = _opt(False, "torch.compile the model")
    knn_k: int = _opt(200, "k of the weighted kNN evaluation")
    knn_temperature: float = _opt(0.1, "temperature of the weighted kNN evaluation")
    knn_every: int = _opt(10, "run the kNN monitor every this many epochs (0: only at the end)")
    progress: bool = _opt(True, "show a progress bar")
    out: str | None = _opt(None, "run folder (default runs/<data>-<objective>-<time>)")
    checkpoint_every: int = _opt(
        0, "write a resumable checkpoint every N steps (0: at the end of every epoch); --resume RUN continues"
    )
    skip_nonfinite: bool = _opt(
        False,
        "skip (and count) steps whose loss or gradient is not finite instead of stopping; checks both on every "
        f"step (two host synchronisations per step); stops after {MAX_CONSECUTIVE_SKIPS} such steps in a row",
    )
    deterministic: bool = _opt(
        False,
        "deterministic algorithms (torch.use_deterministic_algorithms): exact resumes on GPU too, slower",
    )
    tensorboard: bool = _opt(False, "write loss, lr, images/s, kNN and source statistics to RUN/tensorboard")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid value."""
        for name in (
            "epochs",
            "batch_size",
            "proj_hidden_dim",
            "proj_dim",
            "knn_k",
            "knn_images",
            "queue_size",
            "shuffle_bn_groups",
            "mined_negatives",
        ):
            _check(
                isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, "a positive integer"
            )
        _check(
            self.data_placement in ("auto", "device", "host", "stream"),
            "data_placement",
            "one of: auto, device, host, stream",
        )
        _check(
            self.workers is None or (isinstance(self.workers, int) and self.workers >= 0),
            "workers",
            "an integer >= 0",
        )
        for name in ("image_size", "limit"):
            v = getattr(self, name)
            _check(v is None or (isinstance(v, int) and v > 0), name, "a positive integer")
        _check(isinstance(self.knn_every, int) and self.knn_every >= 0, "knn_every", "an integer >= 0")
        # --seed is checked when a new run starts (train()): a run saved before the check, with --seed -1
        # (which torch accepts), still loads for eval, export, report and --resume
        check_seed("split_seed", self.split_seed)
        _check(
            isinstance(self.mined_refresh_every, int) and self.mined_refresh_every >= 0,
            "mined_refresh_every",
            "an integer >= 0",
        )
        _check(self.negatives in NEGATIVES, "negatives", "one of: " + ", ".join(NEGATIVES))
        for name, low in (("mix_hardest", 1), ("mix_synthetic", 0), ("mix_query", 0)):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= low, name, f"an integer >= {low}")
        _check(self.mined_index in INDEX_CHOICES, "mined_index", "one of: " + ", ".join(INDEX_CHOICES))
        _check(
            isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
            "checkpoint_every",
            "an integer >= 0",
        )
        for name in ("temperature", "knn_temperature"):
            _check(_positive(getattr(self, name)), name, "a positive number")
        for name in ("lr",):
            _check(getattr(self, name) is None or _positive(getattr(self, name)), name, "a positive number")
        for name in ("weight_decay", "warmup_epochs"):
            v = getattr(self, name)
            _check(v is None or (_number(v) and v >= 0), name, "a number >= 0")
        for name in ("flip_p", "jitter_p", "grayscale_p", "momentum"):
            v = getattr(self, name)
            _check(
                (v is None and name != "momentum") or (_number(v) and 0 <= v <= 1), name, "a number in [0, 1]"
            )
        _check(self.jitter is None or (_number(self.jitter) and self.jitter >= 0), "jitter", "a number >= 0")
        _check(self.views in RECIPES, "views", "one of: " + ", ".join(RECIPES))
        v = self.key_momentum
        _check(v is None or (_number(v) and 0 <= v <= 1), "key_momentum", "a number in [0, 1]")
        _check(
            _number(self.mix_start_epoch) and self.mix_start_epoch >= 0, "mix_start_epoch", "a number >= 0"
        )
        v = self.crop_min_scale
        _check(v is None or (_number(v) and 0 < v <= 1), "crop_min_scale", "a number in (0, 1]")
        _check(_number(self.tau_plus) and 0 <= self.tau_plus < 1, "tau_plus", "a number in [0, 1)")
        _check(_number(self.beta) and self.beta >= 0, "beta", "a number >= 0")
        _check(_positive(self.margin), "margin", "a positive number")
        _check(self.mining in ("all", "hardest", "semi-hard"), "mining", "one of: all, hardest, semi-hard")
        _check(self.optimizer in ("sgd", "lars", "adamw"), "optimizer", "one of: sgd, lars, adamw")
        _check(self.precision in PRECISIONS, "precision", "one of: " + ", ".join(PRECISIONS))
        dev = self.device
        _check(
            dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
            "device",
            "one of: auto, cpu, cuda, cuda:N",
        )
        if self.oracle and self.objective == "supcon":
            raise ConfigError(
                "options --oracle and --objective supcon cannot be combined: supcon already makes same-class "
                "samples positives, and the oracle would remove them; drop --oracle"
            )

    def resolved_key_momentum(self) -> float:
        """The key encoder's momentum: ``key_momentum``, or 0.99 for queue sources and 0 (off) otherwise."""
        if self.key_momentum is not None:
            return float(self.key_momentum)
        return 0.99 if self.negatives in ("queue", "queue+mochi") else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(
        cls,
        values: dict[str, Any],
        *,
        source: str = "config",
        saved_run: bool = False,
        nulls_from_run: AbstractSet[str] = frozenset(),
    ) -> TrainConfig:
        """Build from a mapping; unknown keys are an error that names them. ``nulls_from_run``: options whose
        null comes from a saved run (a resume's merge of the run's options and the given ones), taken as a
        saved run's are.

        ``saved_run``: ``values`` is the configuration a run saved (its checkpoint's), read as that run
        behaved: without ``split_seed`` (saved before the option existed) its data were split with its
        ``seed``; its ``key_momentum`` of null (saved before the resolved value was recorded) is the momentum
        it used (:meth:`resolved_key_momentum`), so that giving that value again on resume is no change."""
        known = {f.name for f in fields(cls)}
        norm = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(norm) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}"
            )
        values = _coerce(norm, source, allow_null=True if saved_run else nulls_from_run)
        if saved_run and "split_seed" not in values and "seed" in values:  # saved before --split-seed
            values["split_seed"] = values["seed"]
        config = cls(**values)
        if saved_run and config.key_momentum is None:  # saved before it was recorded: the one it used
            config = config.replace(key_momentum=config.resolved_key_momentum())
        return config


def check_option_combinations(config: TrainConfig) -> None:
    """Refuse static option combinations that cannot work, naming the options and what to use instead.

    Only what the options alone decide is checked here. Training runs it when it starts (with the checks
    that depend on the launch, :func:`contrastkit.training.trainer.check_combinations`), not every
    :class:`TrainConfig`: a run saved by an earlier version, which clamped these values, still loads for
    ``eval``, ``export`` and ``report``.
    """
    if config.resolved_key_momentum() > 0 and config.shuffle_bn_groups > config.batch_size:
        raise ConfigError(
            f"--shuffle-bn-groups {config.shuffle_bn_groups} would split the key encoder's batch of "
            f"--batch-size {config.batch_size} images into more groups than it has images (MoCo's shuffling "
            f"BN runs each group with its own BatchNorm statistics): use --shuffle-bn-groups "
            f"{config.batch_size} or less (1 disables shuffling BN), or a larger --batch-size"
        )
    warmup = config.warmup_epochs
    if isinstance(warmup, (int, float)) and warmup > config.epochs:
        raise ConfigError(
            f"--warmup-epochs {warmup:g} is longer than the run (--epochs {config.epochs}): the learning rate "
            f"would still be rising when it ends, never reaching the peak --lr nor decaying: use "
            f"--warmup-epochs {config.epochs} or less (default: a tenth of the epochs), or more --epochs"
        )
    if config.negatives.endswith("+mochi"):
        base = config.negatives.partition("+")[0]
        if base == "queue" and config.mix_hardest > config.queue_size:
            raise ConfigError(
                f"--mix-hardest {config.mix_hardest} asks MoCHi for the {config.mix_hardest} hardest negatives "
                f"of each query, but --queue-size {config.queue_size} holds only {config.queue_size}: use "
                f"--mix-hardest {config.queue_size} or less, or a larger --queue-size"
            )
        in_batch = 2 * config.batch_size - 2
        if base == "in-batch" and config.mix_hardest > in_batch:
            raise ConfigError(
                f"--mix-hardest {config.mix_hardest} asks MoCHi for the {config.mix_hardest} hardest negatives "
                f"of each query, but a batch of --batch-size {config.batch_size} gives each query only "
                f"2 x {config.batch_size} - 2 = {in_batch} in-batch negatives: use --mix-hardest "
                f"{max(in_batch, 1)} or less, or a larger --batch-size"
            )
        if config.mix_start_epoch >= config.epochs:
            raise ConfigError(
                f"--mix-start-epoch {config.mix_start_epoch:g} would start MoCHi's mixing after the run ends "
                f"(--epochs {config.epochs}), so no negative would ever be mixed: use a --mix-start-epoch below "
                f"{config.epochs}, more --epochs, or --negatives {base} without +mochi"
            )


CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json")
# YAML 1.2's floats without a dot (1e-3, 5E4): PyYAML follows YAML 1.1, which reads them as strings
_YAML_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


def _yaml_options(text: str) -> Any:
    """``yaml.safe_load`` of a config file, with YAML 1.2's exponent floats (``lr: 1e-3`` is 0.001, not the
    string '1e-3') and a repeated key refused (PyYAML keeps the last silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_EXPONENT_FLOAT, list("-+0123456789."))

    def mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"option {key} is given twice (line {key_node.start_mark.line + 1}); keep one"
                )
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)  # a SafeLoader subclass: no arbitrary objects


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (.toml), YAML (.yaml/.yml) or JSON (.json) file into a flat mapping of options."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(
            f"config file {str(p)!r} is a folder; give the path of a .toml, .yaml/.yml or .json file of options"
        )
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    if p.suffix not in CONFIG_SUFFIXES:
        raise ConfigError(f"config file {str(p)!r}: use a .toml, .yaml/.yml or .json file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {str(p)!r} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); give a text file of options, saved as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"config file {str(p)!r} cannot be read ({exc.strerror or exc.__class__.__name__})"
        ) from None
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = _yaml_options(text) or {}
        else:
            data = json.loads(text, object_pairs_hook=_refuse_repeated_keys)
    except ConfigError as exc:
        raise ConfigError(f"config file {str(p)!r}: {exc}") from None
    except Exception as exc:  # parse errors of three libraries
        raise ConfigError(f"config file {str(p)!r} cannot be parsed: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of option = value")
    spellings: dict[str, str] = {}
    for name in data:  # batch-size and batch_size are one option: given both ways, which one wins?
        norm = str(name).replace("-", "_")
        if norm in spellings:
            raise ConfigError(
                f"config file {str(p)!r}: option {norm} is given twice, as {spellings[norm]!r} and {name!r}; "
                "keep one"
            )
        spellings[norm] = str(name)
    for name, v in data.items():  # for every command that reads config files (train, text-train)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"config file {str(p)!r}: option {name} must be a finite number, got {v}")
    return data


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s object hook: a key given twice is an error (json keeps the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"option {key} is given twice; keep one")
        out[key] = value
    return out


def null_allowed(allow_null: bool | AbstractSet[str], name: str) -> bool:
    """Whether option ``name`` may be null: ``allow_null`` is True, or a set of option names holding it."""
    return allow_null if isinstance(allow_null, bool) else name in allow_null


def null_option_error(source: str, name: str, type_name: str, default: Any) -> ConfigError:
    """The error for a null (an empty YAML value) given to an option whose type does not allow None (it was
    taken as is: ``batchnorm:`` trained without BatchNorm, ``data:`` crashed)."""
    return ConfigError(
        f"{source}: option {name} (--{name.replace('_', '-')}) is empty (null); give it a value ({type_name}) "
        f"or leave it out for the default ({default!r})"
    )


def _coerce(
    values: dict[str, Any], source: str, *, allow_null: bool | AbstractSet[str] = False
) -> dict[str, Any]:
    """Type-check values read from a file against the field types (ints stay ints, etc.). A null (an empty
    YAML value) is taken only by the options whose type allows None, unless ``allow_null`` is True (a saved
    run's configuration, read as it was written) or names the option."""
    out = {}
    found = {f.name: f for f in fields(TrainConfig)}
    for name, v in values.items():
        t = str(found[name].type)
        if v is None:
            if not (null_allowed(allow_null, name) or "None" in t):
                raise null_option_error(source, name, t, found[name].default)
            out[name] = v
            continue
        if t.startswith("bool"):
            ok = isinstance(v, bool)
        elif t.startswith("int"):
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif t.startswith("float"):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
                raise ConfigError(
                    f"{source}: option {name} (--{name.replace('_', '-')}) must be a finite number, got {v}"
                )
            ok = _number(v)
            v = float(v) if ok else v
        else:
            ok = isinstance(v, str)
        if not ok:
            raise ConfigError(
                f"{source}: option {name} has the wrong type ({type(v).__name__}); expected {t}"
            )
        out[name] = v
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _check(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"option {name} (--{name.replace('_', '-')}) must be {what}")


def unused_options(config: TrainConfig) -> list[str]:
    """Options set away from their defaults that this run does not use (``--queue-size`` with in-batch
    negatives, ``--tau-plus`` with InfoNCE, ...): one sentence each, for a warning. A run records every
    option in config.yaml, so an option silently doing nothing there reads as if it had been used."""
    negatives = config.negatives
    mochi, mined = negatives.endswith("+mochi"), "mined" in negatives
    rules = [
        (("queue_size",), "queue" not in negatives, "--negatives queue / queue+mochi"),
        (
            ("mix_start_epoch", "mix_hardest", "mix_synthetic", "mix_query"),
            not mochi,
            "a --negatives ...+mochi source",
        ),
        (
            ("mined_negatives", "mined_refresh_every", "mined_index", "mined_reencode"),
            not mined,
            "a --negatives ...mined source",
        ),
        (("stem",), config.encoder not in ("auto", "resnet18", "resnet50"), "the ResNet encoders"),
        (
            ("shuffle_bn_groups",),
            config.resolved_key_momentum() <= 0,
            "a momentum key encoder (--negatives queue, or --key-momentum above 0)",
        ),
    ]
    keys = config.batch_size * (2 if config.resolved_key_momentum() > 0 else 1)  # the global batch
    return unused_option_warnings(
        config, used_only_by(rules, objective_unused(config.objective))
    ) + small_queue_warnings(negatives, config.queue_size, keys)
