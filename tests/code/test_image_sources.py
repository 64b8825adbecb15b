"""Pictures as weak-labelled data: ``data.source: image_folder`` (tasks/lib/image_folder.py) on real files in a
temporary folder, its one-line errors, the ``tags`` rule (tasks/lib/rules.py), tag columns seen by rules and
labelling functions but never by the model, labelling functions opening pictures by absolute path, and
``weakflow lfs`` on a picture folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from weakflow.tasks.lib.config import FilesData, ImageFolderData, RuleConfig, load_config
from weakflow.tasks.lib.errors import DataError
from weakflow.tasks.lib.image_folder import materialize_image_folder
from weakflow.tasks.lib.labeling import LabelingFunctionError, apply_sources, votes_matrix
from weakflow.tasks.lib.rules import from_config, keywords, tags

HERE = "tests.code.test_image_sources"
EXAMPLE = "weakflow.tasks.lib.example_lfs"
SEEN: list[pd.DataFrame] = []  # the batches records_the_batch was given


def picture(path: Path, grey: int, size: int = 12, suffix_mode: str = "L") -> Path:
    """A tiny one-colour picture (grey level ``grey``) written with Pillow."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    colour = grey if suffix_mode == "L" else (grey, grey, grey)
    Image.new(suffix_mode, (size, size), colour).save(path)
    return path


def tree(root: Path) -> Path:
    """train/{0,1} (dark 0, bright 1), test/{0,1}, unlabeled/ with nested folders, noise files and a metadata CSV."""
    base = root / "pics"
    for i in range(3):
        picture(base / "train" / "0" / f"d{i}.png", 20 + i)
        picture(base / "train" / "1" / f"b{i}.png", 230 - i)
    picture(base / "train" / "1" / "deeper" / "b9.JPG", 240, suffix_mode="RGB")  # nested, upper-case suffix
    picture(base / "train" / "0" / ".hidden.png", 10)  # hidden: skipped
    picture(base / "train" / ".cache" / "x.png", 10)  # a hidden folder: skipped, not a class
    (base / "train" / "0" / "notes.txt").write_text("not a picture")
    for i in range(2):
        picture(base / "test" / "0" / f"t{i}.png", 30)
        picture(base / "test" / "1" / f"t{i}.png", 220)
    picture(base / "unlabeled" / "u0.png", 15)
    picture(base / "unlabeled" / "a" / "u1.webp", 250, suffix_mode="RGB")
    picture(base / "unlabeled" / "a" / "b" / "u2.bmp", 128)
    pd.DataFrame({
        "file_name": ["train/0/d0.png", "./train/1/b0.png", "unlabeled/a/u1.webp", "unlabeled/a/b/u2.bmp",
                      "unlabeled/u0.png", "test/1/t0.png"],
        "annotator": [0, 0, 1, 1, -1, 1],
        "tags": ["Dark; night", "day|sunny", "sunny , beach", "grey", "night", "sunny"],
        "size_kb": [1.5, 2.0, 3.0, 4.0, 5.0, 6.0],
        "note": ["a", "b", "c", "d", "e", "f"],
    }).to_csv(base / "metadata.csv", index=False)
    return base


def folder_config(base: Path, **extra) -> ImageFolderData:
    return ImageFolderData(path=base, weak_label_columns=["annotator"], tag_columns=["tags"], **extra)


def test_a_picture_folder_becomes_tables_of_paths_with_metadata_and_unlabelled_rows(tmp_path):
    base = tree(tmp_path)
    spec = materialize_image_folder(folder_config(base, feature_columns=["size_kb"]), tmp_path / "data")
    assert spec.image_columns == ["image"] and spec.image_root == base.absolute()
    assert spec.classes == [0, 1] and spec.weak_label_columns == ["annotator"] and spec.tag_columns == ["tags"]
    assert spec.feature_columns == ["size_kb"] and spec.input_columns == ["size_kb", "image"]  # tags: no input
    assert spec.train_path.parent.name.startswith("imagefolder-")
    train = pd.read_parquet(spec.train_path)
    assert train["image"].tolist() == ["train/0/d0.png", "train/0/d1.png", "train/0/d2.png", "train/1/b0.png",
                                       "train/1/b1.png", "train/1/b2.png", "train/1/deeper/b9.JPG",
                                       "unlabeled/a/b/u2.bmp", "unlabeled/a/u1.webp", "unlabeled/u0.png"]
    assert train["label"].tolist()[:7] == [0, 0, 0, 1, 1, 1, 1] and train["label"].isna().tolist()[7:] == [True] * 3
    by_path = train.set_index("image")
    assert by_path.loc["train/1/b0.png", "tags"] == "day|sunny"  # "./train/1/b0.png" in the CSV
    assert by_path.loc["unlabeled/a/u1.webp", "annotator"] == 1 and by_path.loc["unlabeled/u0.png", "tags"] == "night"
    assert pd.isna(by_path.loc["train/0/d1.png", "tags"]) and pd.isna(by_path.loc["train/0/d1.png", "annotator"])
    assert by_path.loc["unlabeled/a/b/u2.bmp", "note"] == "d"  # other metadata columns join too
    test = pd.read_parquet(spec.test_path)
    assert test["image"].tolist() == ["test/0/t0.png", "test/0/t1.png", "test/1/t0.png", "test/1/t1.png"]
    assert test["label"].tolist() == [0, 0, 1, 1] and test.set_index("image").loc["test/1/t0.png", "tags"] == "sunny"
    # the same files: the same tables; a new picture: new tables
    assert materialize_image_folder(folder_config(base, feature_columns=["size_kb"]), tmp_path / "data") == spec
    picture(base / "unlabeled" / "u3.png", 99)
    again = materialize_image_folder(folder_config(base, feature_columns=["size_kb"]), tmp_path / "data")
    assert again.train_path != spec.train_path and len(pd.read_parquet(again.train_path)) == 11


def test_class_folder_names_stay_names_and_no_metadata_or_unlabelled_folder_is_fine(tmp_path):
    base = tmp_path / "pets"
    for cls in ("cat", "dog"):
        picture(base / "train" / cls / "a.png", 50)
        picture(base / "test" / cls / "a.png", 50)
    picture(base / "test" / "cat" / "b.png", 50)
    spec = materialize_image_folder(ImageFolderData(path=base), tmp_path / "data")
    assert spec.classes == ["cat", "dog"]
    train, test = pd.read_parquet(spec.train_path), pd.read_parquet(spec.test_path)
    assert list(train.columns) == ["image", "label"] and train["label"].tolist() == ["cat", "dog"]
    assert test["label"].tolist() == ["cat", "cat", "dog"]


def test_a_picture_folder_through_the_config_file_and_the_pipeline_reader(tmp_path):
    base = tree(tmp_path)
    (tmp_path / "cfg.yaml").write_text("data:\n  source: image_folder\n  path: pics\n  weak_label_columns: [annotator]\n"
                                       "  tag_columns: [tags]\ntracking:\n  workspace: ws\n")
    from weakflow.tasks.lib.data import read_raw, resolve_data_spec

    cfg = load_config(tmp_path / "cfg.yaml")
    spec = resolve_data_spec(cfg)
    assert spec.image_root == base and Path(spec.train_path).is_relative_to(tmp_path / "ws")
    raw = read_raw(spec)
    assert len(raw.train) == 10 and len(raw.test) == 4


def broken(case: str, base: Path) -> str:
    """Break ``base`` (a good tree) one way; return what the error must name."""
    meta = base / "metadata.csv"
    if case == "no train folder":
        os.rename(base / "train", base / "training")
        return f"data.train_dir: the folder {base / 'train'} does not exist"
    if case == "no test folder":
        os.rename(base / "test", base / "tests")
        return f"data.test_dir: the folder {base / 'test'} does not exist"
    if case == "test class unknown":
        picture(base / "test" / "7" / "x.png", 9)
        return f"data.test_dir: {base / 'test'} has class folder(s) ['7'] that {base / 'train'} lacks"
    if case == "no pictures":
        for p in (base / "train").rglob("*"):
            if p.is_file() and p.suffix.lower() != ".txt":
                p.unlink()
        for p in sorted((base / "train").iterdir()):
            if p.name != "0":
                import shutil

                shutil.rmtree(p)
        (base / "train" / "0" / "deeper").mkdir()
        return f"data.train_dir: class folder {base / 'train' / '0'} holds no pictures"
    if case == "loose picture":
        picture(base / "train" / "stray.png", 9)
        return f"data.train_dir: {base / 'train'} holds picture(s) outside a class folder (stray.png)"
    frame = pd.read_csv(meta)
    if case == "file_name not found":
        frame.loc[3, "file_name"] = "unlabeled/a/b/missing.png"
        frame.to_csv(meta, index=False)
        return (f"data.metadata: {meta} row 3 (rows count from 0, the header not counted): file_name "
                "'unlabeled/a/b/missing.png' names no picture")
    if case == "file_name twice":
        frame.loc[4, "file_name"] = "./unlabeled/a/u1.webp"
        frame.to_csv(meta, index=False)
        return f"data.metadata: {meta} names 'unlabeled/a/u1.webp' in rows [2, 4]"
    if case == "no file_name column":
        frame.rename(columns={"file_name": "filename"}).to_csv(meta, index=False)
        return f"data.metadata: {meta} has no column 'file_name'"
    if case == "weak column missing":
        frame.drop(columns=["annotator"]).to_csv(meta, index=False)
        return f"data.weak_label_columns: ['annotator'] not in {meta}"
    if case == "metadata sets label":
        frame.assign(label=1).to_csv(meta, index=False)
        return f"data.metadata: {meta} has a column 'label', which image_folder sets itself"
    if case == "no metadata file":
        meta.unlink()
        return f"data.metadata: {meta} does not exist, but data.weak_label_columns"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no train folder", "no test folder", "test class unknown", "no pictures",
                                  "loose picture", "file_name not found", "file_name twice", "no file_name column",
                                  "weak column missing", "metadata sets label", "no metadata file"])
def test_each_problem_with_a_picture_folder_is_one_line_naming_it(tmp_path, case):
    base = tree(tmp_path)
    expected = broken(case, base)
    with pytest.raises(DataError) as info:
        materialize_image_folder(folder_config(base), tmp_path / "data")
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_an_empty_training_folder_says_there_are_no_pictures(tmp_path):
    base = tmp_path / "empty"
    (base / "train").mkdir(parents=True)
    picture(base / "test" / "a" / "x.png", 9)
    with pytest.raises(DataError, match=re.escape(f"data.train_dir: {base / 'train'} holds no pictures in class")):
        materialize_image_folder(ImageFolderData(path=base), tmp_path / "data")


def test_a_class_folder_spelling_the_abstain_value_is_a_data_error(tmp_path):
    base = tmp_path / "neg"
    for cls in ("-1", "1"):
        picture(base / "train" / cls / "a.png", 9)
        picture(base / "test" / cls / "a.png", 9)
    with pytest.raises(DataError, match=r"^data.path .*: data.abstain -1 is the class -1 of data.classes"):
        materialize_image_folder(ImageFolderData(path=base), tmp_path / "data")


TAGS = pd.Series(["shirt;cotton;long-sleeve", "T-Shirt, cotton", " SHIRT | wool ", "shirts", "", None, np.nan,
                  "cotton;;Long-Sleeve", "dress shirt"], dtype=object)


def test_a_tags_rule_fires_on_whole_tags_with_any_separator_and_case():
    rule = tags("tags", ["shirt", "blouse"], "top", abstain="")
    assert rule(pd.DataFrame({"tags": TAGS})).tolist() == ["top", "", "top", "", "", "", "", "", ""]
    sleeve = from_config(RuleConfig(name="sleeve", kind="tags", column="tags", label=1, tags=[" long-sleeve "]), -1)
    assert sleeve(pd.DataFrame({"tags": TAGS})).tolist() == [1, -1, -1, -1, -1, -1, -1, 1, -1]
    assert tags("tags", ["x"], 1)(pd.DataFrame({"tags": [np.nan, np.nan]})).tolist() == [-1, -1]  # all empty
    with pytest.raises(LabelingFunctionError, match=r"rule 'n' \(tags\) needs text in column 'tags', which holds int64"):
        tags("tags", ["x"], 1, name="n")(pd.DataFrame({"tags": [1, 2]}))


def test_keyword_rules_keep_working_on_a_tag_column():
    rule = keywords("tags", ["long-sleeve", "wool"], "warm", abstain="")
    assert rule(pd.DataFrame({"tags": TAGS})).tolist() == ["warm", "", "warm", "", "", "", "", "warm", ""]


@pytest.mark.parametrize(("raw", "message"), [
    ({"tags": []}, "rule 'r': kind tags needs a non-empty tags list"),
    ({"tags": ["a;b"]}, "rule 'r': tag(s) ['a;b'] are empty or hold a separator (; , |)"),
    ({"tags": [" "]}, "rule 'r': tag(s) [' '] are empty or hold a separator"),
])
def test_a_tags_rule_without_usable_tags_is_refused_at_load(raw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RuleConfig(name="r", kind="tags", column="tags", label=1, **raw)


def spec_of(root: Path | None, **extra) -> FilesData:
    return FilesData(train_path="t.parquet", test_path="s.parquet", image_columns=["image"], image_root=root,
                     weak_label_columns=["annotator"], classes=[0, 1], **extra)


def records_the_batch(batch: pd.DataFrame) -> np.ndarray:
    SEEN.append(batch.copy())
    return np.full(len(batch), -1)


def test_rules_and_functions_see_tag_columns_and_functions_open_pictures_by_absolute_path(tmp_path, monkeypatch):
    base = tree(tmp_path)
    spec = materialize_image_folder(folder_config(base), tmp_path / "data")
    train = pd.read_parquet(spec.train_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # nowhere near the pictures
    rules = [RuleConfig(name="sunny", kind="tags", column="tags", label=1, tags=["sunny"]),
             RuleConfig(name="night", kind="keywords", column="tags", label=0, keywords=["night"]),
             RuleConfig(name="deep", kind="regex", column="image", label=1, pattern="^train/1/deeper/")]
    SEEN.clear()
    out = apply_sources(train, spec, rules, [f"{EXAMPLE}:bright_is_one_dark_is_zero", f"{HERE}:records_the_batch"],
                        [0, 1], -1, batch_size=4)
    assert list(out.columns) == ["rule:sunny", "rule:night", "rule:deep", "lf:bright_is_one_dark_is_zero",
                                 "lf:records_the_batch"]
    assert out["rule:sunny"].tolist() == [-1, -1, -1, 1, -1, -1, -1, -1, 1, -1]
    assert out["rule:night"].tolist() == [0, -1, -1, -1, -1, -1, -1, -1, -1, 0]
    assert out["rule:deep"].tolist() == [-1] * 6 + [1] + [-1] * 3  # rules read the path as the file spells it
    # the pictures: 20-22 dark, 228-240 bright, unlabelled 128 (abstain), 250, 15
    assert out["lf:bright_is_one_dark_is_zero"].tolist() == [0, 0, 0, 1, 1, 1, 1, -1, 1, 0]
    seen = pd.concat(SEEN)
    assert list(seen.columns) == ["image", "tags"]  # no label, no weak column, no other metadata
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in seen["image"])
    assert seen["image"].tolist()[0] == str(base / "train" / "0" / "d0.png")
    assert train["image"].iloc[0] == "train/0/d0.png"  # the caller's frame is left as it was
    votes = votes_matrix(out, list(out.columns), [0, 1], -1)
    assert votes.shape == (10, 5)


def test_a_relative_picture_root_is_resolved_from_the_working_directory(tmp_path, monkeypatch):
    picture(tmp_path / "pics" / "a.png", 10)
    picture(tmp_path / "pics" / "b.png", 200)
    monkeypatch.chdir(tmp_path)
    frame = pd.DataFrame({"image": ["a.png", "b.png", None], "label": [None] * 3, "annotator": [-1] * 3})
    out = apply_sources(frame, spec_of(Path("pics")), [], [f"{EXAMPLE}:bright_is_one_dark_is_zero"], [0, 1], -1)
    assert out.iloc[:, 0].tolist() == [0, 1, -1]  # an empty cell stays empty: no picture, no vote


@pytest.mark.parametrize(("extra", "rule", "message"), [
    ({}, RuleConfig(name="t", kind="tags", column="tags", label=1, tags=["x"]),
     "rule 't' reads column 'tags', which is not an input column: a rule sees only data.feature_columns + "
     "data.text_columns + data.image_columns, never labels (input columns: ['image'])"),
    ({"tag_columns": ["tags"]}, RuleConfig(name="n", kind="keywords", column="note", label=1, keywords=["x"]),
     "rule 'n' reads column 'note', which is not an input column: a rule sees only data.feature_columns + "
     "data.text_columns + data.image_columns + data.tag_columns, never labels (input columns: ['image'], tag "
     "columns: ['tags'])"),
    ({"tag_columns": ["colour"]}, RuleConfig(name="c", kind="tags", column="colour", label=1, tags=["x"]),
     "the data lacks tag column(s) ['colour'] (data.tag_columns)"),
])
def test_a_rule_reads_only_input_and_tag_columns(tmp_path, extra, rule, message):
    frame = pd.DataFrame({"image": ["a.png"], "tags": ["x"], "note": ["x"], "label": [None], "annotator": [1]})
    with pytest.raises(LabelingFunctionError) as info:
        apply_sources(frame, spec_of(tmp_path, **extra), [rule], [], [0, 1], -1)
    assert str(info.value).startswith(message), str(info.value)


def test_tag_columns_are_no_model_input(tmp_path):
    spec = spec_of(tmp_path, tag_columns=["tags"], feature_columns=["size_kb"])
    assert spec.input_columns == ["size_kb", "image"]


LFS_CONFIG = f"""\
data:
  source: image_folder
  path: pics
  weak_label_columns: [annotator]
  tag_columns: [tags]
weak_labels:
  rules:
    - {{name: sunny, kind: tags, column: tags, label: 1, tags: [sunny, day]}}
    - {{name: night_words, kind: keywords, column: tags, label: 0, keywords: [night]}}
  labeling_functions: ["{EXAMPLE}:bright_is_one_dark_is_zero"]
tracking:
  workspace: ws
"""


def test_weakflow_lfs_measures_rules_and_picture_functions_on_a_picture_folder(tmp_path, monkeypatch, capsys):
    from weakflow.flows.cli import main

    tree(tmp_path)
    (tmp_path / "cfg.yaml").write_text(LFS_CONFIG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code = main(["lfs", "--config", str(tmp_path / "cfg.yaml"), "--no-log", "--shards", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("4 source(s) applied to 10 rows of ") and "(7 gold)" in out.splitlines()[0]
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in out.splitlines())
            if len(cells) > 1 and cells[0] in ("annotator", "rule:sunny", "rule:night_words",
                                               "lf:bright_is_one_dark_is_zero")}
    # by hand (rows d0 d1 d2 b0 b1 b2 b9 u2 u1 u0): the annotator votes on d0 (0), b0 (0: wrong), u2 and u1 (1);
    # sunny on b0, u1; night on d0, u0; the brightness function on all but the mid-grey u2 (all 7 gold right).
    # The annotator's overlap: d0, b0, u1 (u2 has no other vote); conflict: b0 only
    assert rows["annotator"][:5] == ["0, 1", f"{4 / 10:.3f}", f"{3 / 10:.3f}", f"{1 / 10:.3f}", "4"]
    assert rows["annotator"][5] == "1/2"
    assert rows["rule:sunny"][0] == "1" and rows["rule:sunny"][4:6] == ["2", "1/1"]
    assert rows["rule:night_words"][0] == "0" and rows["rule:night_words"][4:6] == ["2", "1/1"]
    assert rows["lf:bright_is_one_dark_is_zero"][4:6] == ["9", "7/7"]
