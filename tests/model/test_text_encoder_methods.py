"""Every weak-training method and full-training strategy on text through the pretrained encoder: the one
composition (PlainSteps, in memory) on a slice of the shipped SMS data with ``text.encoder=minilm``. The runs
share one workspace, so the embedding cache serves every run after the first."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from weakflow.tasks.core.encoder import DIMS, EncoderFeaturizer
from weakflow.tasks.lib.config import DemoTextData, load_config
from weakflow.tasks.lib.demo_text import DEMO_RULES, materialize_demo_text


@pytest.fixture(scope="module")
def slice_config(tmp_path_factory):
    from tests.conftest import FAST

    root = tmp_path_factory.mktemp("encoder-methods")
    demo = materialize_demo_text(DemoTextData(), root / "demo")
    train, test = pd.read_parquet(demo.train_path), pd.read_parquet(demo.test_path)
    gold = train[train["label"].notna()]
    train = pd.concat([gold, train[train["label"].isna()].sample(500, random_state=0)])
    train.sample(frac=1.0, random_state=1).to_parquet(root / "train.parquet", index=False)
    test.sample(200, random_state=0).to_parquet(root / "test.parquet", index=False)
    config = {
        "data": {"source": "files", "train_path": "train.parquet", "test_path": "test.parquet", "text_columns": ["text"],
                 "label_column": "label", "classes": ["ham", "spam"], "abstain": ""},
        "weak_labels": {"rules": [r.model_dump(exclude_defaults=True) for r in DEMO_RULES]},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root, [*FAST, f"tracking.workspace={root / 'ws'}", "text.encoder=minilm", "weak_train.epochs=6",
                  "full_train.epochs=6", "full_train.finetune_epochs=3", "full_train.self_train.max_rounds=1"]


def run(slice_config, *overrides: str):
    from weakflow.flows.compose import compose
    from weakflow.tasks.lib.steps import PlainSteps, RunContext

    root, base = slice_config
    cfg = load_config(root / "config.yaml", [*base, *overrides])
    return compose(cfg, RunContext.of(cfg), PlainSteps())[1]


@pytest.mark.slow
@pytest.mark.parametrize("override", [
    *(f"weak_train.method={m}" for m in ("anchored", "glc", "ce", "gce", "confident_learning", "clid_mu")),
    *(f"full_train.strategy={s}" for s in ("pretrain_finetune", "self_train", "distill")),
])
def test_every_method_and_strategy_trains_on_the_embedding(slice_config, override):
    outcome = run(slice_config, override)
    featurizer = outcome.data.schema.featurizer
    assert isinstance(featurizer, EncoderFeaturizer) and outcome.text.chosen == "minilm"
    assert outcome.weak is not None and outcome.final is not None  # the weak side trained
    assert outcome.selection.model.spec.num_features == DIMS + 4  # the embedding and the four descriptors
    # spam is easy to tell on this slice: every candidate well above the majority class (~87% ham)
    assert min(outcome.selection.table["oof_accuracy"]) > 0.9, outcome.selection.table
