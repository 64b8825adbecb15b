"""Contamination checks on planted data: exact copies, near-duplicates and a leaking feature are found
with the planted counts; clean data yields none."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from weakflow.data_checks.contamination import NearDuplicateIndex, exact_pairs, label_leakage


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    return x[order[:360]].astype(np.float32), x[order[360:]].astype(np.float32), y[order[:360]], y[order[360:]]


def test_clean_split_has_no_exact_or_near_duplicates(digits):
    test, train, _, _ = digits
    assert exact_pairs(test, train).empty
    index = NearDuplicateIndex(test, factor=0.25)
    assert index.threshold > 0 and index.near_pairs(train).empty


def test_planted_exact_and_near_duplicates_are_found_with_their_counts(digits):
    test, train, _, _ = digits
    rng = np.random.default_rng(1)
    planted_exact = rng.choice(len(test), 7, replace=False)
    planted_near = rng.choice(np.setdiff1d(np.arange(len(test)), planted_exact), 11, replace=False)
    index = NearDuplicateIndex(test, factor=0.25)
    near_rows = test[planted_near] + rng.normal(0, 0.05, (11, test.shape[1])).astype(np.float32)  # tiny jitter
    source = np.concatenate([train[:500], test[planted_exact], near_rows])
    exact = exact_pairs(test, source)
    assert sorted(exact["reference_index"]) == sorted(planted_exact)
    assert (exact["row_index"] >= 500).all() and len(exact) == 7
    near = index.near_pairs(source).sort_values("row_index")
    # each jittered row is paired with the test row it was copied from, at its true standardised distance
    assert near["row_index"].tolist() == list(range(507, 518))
    assert near["reference_index"].tolist() == planted_near.tolist()
    expected = np.linalg.norm((near_rows - test[planted_near]) / index.std, axis=1)
    assert np.allclose(near["distance"], expected, rtol=1e-4)
    # float noise below the rounding does not hide an exact copy
    assert len(exact_pairs(test, test[:3] + 1e-9)) == 3


def test_a_leaking_feature_is_flagged_and_honest_features_are_not(digits):
    _, train, _, y = digits
    x = train[:300]
    labels = y[:300]
    leak = labels * 2.0 + 0.1  # a near-copy of the label
    table = label_leakage(np.column_stack([x[:, :8], leak]), labels, [f"px_{i}" for i in range(8)] + ["leak"])
    assert table.loc[table["leaks"], "feature"].tolist() == ["leak"]
    assert table.set_index("feature").loc["leak", "accuracy"] == pytest.approx(1.0)


def test_the_projected_index_for_large_references_finds_the_same_pairs(digits):
    """Large references are searched through a PCA radius filter; it must not miss or invent a pair."""
    test, train, _, _ = digits
    rng = np.random.default_rng(3)
    reference = np.concatenate([train, test])
    planted = rng.choice(len(reference), 40, replace=False)
    rows = np.concatenate([reference[planted] + rng.normal(0, 0.03, (40, 64)).astype(np.float32), test[:100] + 3.0])
    small = NearDuplicateIndex(reference, factor=0.25)
    large = NearDuplicateIndex(reference, factor=0.25, large=100)  # force the projected path
    assert large.projected and not small.projected
    # and rows just inside / just outside the threshold, in random directions (the bounds must be exact)
    edge = np.stack([_at_distance(small, reference[k], small.threshold * f, rng)
                     for k, f in zip(rng.choice(len(reference), 20, replace=False), [0.97, 1.03] * 10)])
    rows = np.concatenate([rows, edge])
    a, b = small.near_pairs(rows), large.near_pairs(rows)
    assert len(a) >= 50 and a["row_index"].tolist() == b["row_index"].tolist()
    assert a["reference_index"].tolist() == b["reference_index"].tolist()
    assert np.allclose(a["distance"], b["distance"], atol=1e-4)
    d, i = large.query(rows, chunk=7)  # many chunks, each its own tree: the same answer
    d1, i1 = large.query(rows)
    assert np.array_equal(i, i1) and np.allclose(d, d1)


def _at_distance(index: NearDuplicateIndex, row: np.ndarray, distance: float, rng: np.random.Generator) -> np.ndarray:
    """``row`` moved by exactly ``distance`` in the index's standardised space, in a random direction."""
    u = rng.normal(size=row.shape)
    return (row + u / np.linalg.norm(u) * distance * index.std).astype(np.float32)


def test_the_threshold_is_the_boundary(digits):
    """Rows at half the threshold from a test row are found; rows at twice it are not."""
    test, _, _, _ = digits
    index = NearDuplicateIndex(test, factor=0.25)
    rng = np.random.default_rng(4)
    inside = np.stack([_at_distance(index, test[i], 0.5 * index.threshold, rng) for i in range(10)])
    outside = np.stack([_at_distance(index, test[i], 2.0 * index.threshold, rng) for i in range(10, 20)])
    near = index.near_pairs(np.concatenate([inside, outside]))
    assert near["row_index"].tolist() == list(range(10)) and near["reference_index"].tolist() == list(range(10))
    assert np.allclose(near["distance"], 0.5 * index.threshold, rtol=1e-3)


def test_repeated_reference_rows_do_not_zero_the_threshold(digits):
    """If half the reference rows had an exact copy, a plain median NN distance would be 0 and nothing
    would ever be near. The median is over distinct rows, so repeating rows does not move the threshold."""
    test, train, _, _ = digits
    rng = np.random.default_rng(6)
    plain = NearDuplicateIndex(test, factor=0.25)
    repeated = np.concatenate([test, test])  # every row has an exact copy; same mean and spread
    index = NearDuplicateIndex(repeated, factor=0.25)
    assert index.median_nn == pytest.approx(plain.median_nn, rel=1e-5) and index.threshold > 0
    planted = rng.choice(len(test), 9, replace=False)
    rows = np.concatenate([train[:200], test[planted] + rng.normal(0, 0.05, (9, 64)).astype(np.float32)])
    near = index.near_pairs(rows)
    assert near["row_index"].tolist() == list(range(200, 209))
    assert (near["reference_index"].to_numpy() % len(test)).tolist() == planted.tolist()


def test_a_reference_of_one_distinct_row_warns_instead_of_silently_finding_nothing():
    reference = np.tile(np.arange(8, dtype=np.float32), (50, 1))
    with pytest.warns(UserWarning, match="1 distinct row"):
        index = NearDuplicateIndex(reference)
    assert index.threshold == 0.0 and index.near_pairs(reference[:3] + 0.01).empty


# --- text copies disguised with Unicode (issue 26, item 5) ----------------------------------------------------

MESSAGE = "Congratulations! You have won a free café voucher: reply WIN to claim your résumé prize now"
HOMOGLYPHS = str.maketrans("aceopxyCOP", "асеорхуСОР")  # Latin letters -> Cyrillic look-alikes


def _inside_words(text: str, mark: str) -> str:
    """``mark`` after the second letter of every word of three letters or more."""
    return " ".join(w[:2] + mark + w[2:] if len(w) > 2 else w for w in text.split(" "))


DISGUISES = {
    "full-width": lambda t: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in t),
    "zero-width spaces": lambda t: _inside_words(t, "\u200b"),
    "soft hyphens": lambda t: _inside_words(t, "\u00ad"),
    "joiners": lambda t: " ".join(w[:1] + "\u200d" + w[1:2] + "\u200c" + w[2:] for w in t.split(" ")),
    "NFD": lambda t: __import__("unicodedata").normalize("NFD", t),
    "Cyrillic look-alikes": lambda t: t.translate(HOMOGLYPHS),
}
OTHER_MESSAGES = ["Are we still on for dinner tonight? I can bring the salad", "Sorry, running late. See you at 8",
                  "Your parcel is waiting at the depot, opening hours are 9 to 5"]


@pytest.mark.parametrize("kind", list(DISGUISES))
def test_a_disguised_copy_of_a_test_message_is_an_exact_copy(kind):
    import pandas as pd

    from weakflow.data_checks.contamination import exact_text_pairs

    disguised = DISGUISES[kind](MESSAGE)
    assert disguised != MESSAGE
    test = pd.DataFrame({"text": [OTHER_MESSAGES[0], MESSAGE]})
    train = pd.DataFrame({"text": [*OTHER_MESSAGES[1:], disguised]})
    pairs = exact_text_pairs(test, train, [], ["text"])
    assert pairs.values.tolist() == [[1, 2]], kind  # test row 1 is training row 2, and nothing else matches


@pytest.mark.parametrize("kind", list(DISGUISES))
def test_a_disguised_near_copy_of_a_test_message_is_a_near_copy(kind):
    import pandas as pd

    from weakflow.data_checks.contamination import near_text_pairs

    edited = MESSAGE.replace("now", "today")  # one word changed: not an exact copy, a near one
    test = pd.Series([OTHER_MESSAGES[0], MESSAGE])
    train = pd.Series([*OTHER_MESSAGES[1:], DISGUISES[kind](edited)])
    pairs = near_text_pairs(test, train)
    assert pairs[["reference_index", "row_index"]].values.tolist() == [[1, 2]], kind
    assert 0 < pairs["distance"].iloc[0] <= 0.1


def test_a_genuinely_different_message_is_not_a_copy_whatever_its_script():
    """The negative control: the same words in another order, and a message in Cyrillic script, are neither
    exact nor near copies of the test message or of each other."""
    import pandas as pd

    from weakflow.data_checks.contamination import exact_text_pairs, near_text_pairs

    test = pd.DataFrame({"text": [MESSAGE, "Привет, как дела? Увидимся вечером"]})
    train = pd.DataFrame({"text": ["Claim your free prize now: reply WIN, you have won a café voucher and résumé",
                                   "Привет, всё хорошо, до завтра", *OTHER_MESSAGES]})
    assert exact_text_pairs(test, train, [], ["text"]).empty
    assert near_text_pairs(test["text"], train["text"]).empty
