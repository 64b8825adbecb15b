"""The review report's figures and its two renderings: a self-contained HTML page (figures embedded as
base64 PNG, no external CSS or JS) and the same content as markdown."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from weakflow.tasks.core.metrics import calibration_bins
from weakflow.tasks.core.robustness import PICTURE_CORRUPTIONS
from weakflow.tasks.lib.data import ROW_ID, PipelineData
from weakflow.tasks.lib.review import CHALLENGER, CHAMPION, FINAL, GOLD_ONLY, LABELS, NO_CHAMPION, WEAK, Figure, Review

ECE_BINS = 15  # tasks.core.metrics.expected_calibration_error's default, so the diagram shows what ECE sums


# --- figures -----------------------------------------------------------------------------------


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    return buf.getvalue()


def figures(review: Review, probs: dict[str, np.ndarray], y: np.ndarray, data: PipelineData) -> list[Figure]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[Figure] = []
    # reliability diagram: accuracy vs confidence in the bins ECE sums over, one line per model
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, 1], [0, 1], color="#999", linestyle=":", label="perfect calibration")
    for name, p in probs.items():
        count, acc, mean_conf = calibration_bins(p, y, ECE_BINS)
        keep = count > 0
        ax.plot(mean_conf[keep], acc[keep], marker="o", label=f"{LABELS[name]} (ECE {review.scores[name].ece:.3f})")
    ax.set_xlabel(f"confidence ({ECE_BINS} equal-width bins)")
    ax.set_ylabel("accuracy in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Reliability diagram (gold test split)")
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.11)
    out.append(Figure("calibration_curve_plot.png", "reliability diagram", _png(fig)))

    if len(review.robustness):  # one panel: a colour per corruption, challenger solid, champion dashed
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, kind in enumerate(dict.fromkeys(review.robustness["corruption"])):
            for name, style in ((CHALLENGER, "-"), (CHAMPION, "--")):
                part = review.robustness[(review.robustness["corruption"] == kind) & (review.robustness["model"] == name)]
                if len(part):
                    ax.plot([0.0, *part["severity"]], [part["clean_accuracy"].iloc[0], *part["accuracy"]], style,
                            marker="o", color=colors[i % len(colors)],
                            label=kind if name == CHALLENGER else None)
        ax.plot([], [], "k-", label=LABELS[CHALLENGER])
        if CHAMPION in set(review.robustness["model"]):
            ax.plot([], [], "k--", label=LABELS[CHAMPION])
        ax.set_xlabel("severity (0 = clean)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower left", ncol=2)
        ax.set_title("Accuracy under corruption")
        fig.subplots_adjust(left=0.09, right=0.98, top=0.92, bottom=0.12)
        out.append(Figure("robustness.png", "accuracy per corruption and severity", _png(fig)))

    picture_kinds = [k for k in dict.fromkeys(review.robustness["corruption"]) if k in PICTURE_CORRUPTIONS] \
        if len(review.robustness) else []
    if data.schema.images is not None and picture_kinds and len(data.test):  # what each level does to a picture
        out.append(Figure("corruptions.png", CORRUPTIONS_ALT, corruption_sheet(
            data.schema.images.pixels(data.test.iloc[:1])[0], picture_kinds,
            sorted(set(review.robustness["severity"])))))

    shape = data.spec.image_shape
    if data.schema.images is not None and len(review.issues) and review.top_k:  # pictures: a contact sheet
        top = review.issues.head(review.top_k)
        pixels = data.schema.images.pixels(data.train.set_index(ROW_ID).loc[top[ROW_ID]])
        review.thumbnails = [picture_png(p, max(1, -(-40 // p.shape[-1]))) for p in pixels]
        captions = [(f"#{r.rank} row {getattr(r, ROW_ID)}", f"given: {r.weak_label}", f"model: {r.predicted_label}")
                    for r in top.itertuples(index=False)]
        out.append(Figure("label_issues.png", SHEET_ALT, contact_sheet(pixels, captions)))
    elif shape is not None and len(review.issues) and review.top_k:
        tiles = issue_images(review, data, shape)
        review.thumbnails = [_tile_png(t, 5) for t in tiles]
        out.append(Figure("label_issues.png", "suspected mislabelled rows, in rank order (left to right, top "
                                              "to bottom)", _grid_png(tiles)))
    return out


def issue_images(review: Review, data: PipelineData, shape: tuple[int, int, int]) -> np.ndarray:
    """The top-k suspected rows as images in [0, 1], (k, H, W) or (k, H, W, 3)."""
    top = review.issues.head(review.top_k)
    imgs = data.x(data.train.set_index(ROW_ID).loc[top[ROW_ID]]).reshape(len(top), *shape)
    lo, hi = float(imgs.min()), float(imgs.max())
    imgs = (imgs - lo) / (hi - lo) if hi > lo else np.zeros_like(imgs)
    return imgs.transpose(0, 2, 3, 1) if shape[0] == 3 else imgs[:, 0]


def _tile_png(tile: np.ndarray, scale: int) -> bytes:
    """One image as a PNG (PIL, no matplotlib): grey tiles inverted (ink dark), pixels enlarged."""
    from PIL import Image

    arr = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
    arr = (arr * 255).astype(np.uint8) if arr.ndim == 3 else (255 - arr * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


SHEET_ALT = ("contact sheet of the suspected mislabelled pictures, most suspicious first (left to right, top to "
             "bottom): rank and row_id, the given (weak) label and the model's label")


CORRUPTIONS_ALT = "the first test picture under each picture corruption, at each severity of the suite"


def corruption_sheet(picture: np.ndarray, kinds: list[str], severities: list[float], seed: int = 0) -> bytes:
    """One picture (C, S, S) uint8 as a contact sheet: a row per corruption, the clean picture first and then
    the corrupted one at each severity."""
    from weakflow.tasks.core.robustness import corrupt_pictures

    tiles, captions = [], []
    for kind in kinds:
        tiles.append(picture)
        captions.append(("clean", ""))
        for severity in severities:
            tiles.append(corrupt_pictures(picture[None], kind, float(severity), seed)[0])
            captions.append((kind, f"severity {severity:g}"))
    return contact_sheet(np.stack(tiles), captions, cols=1 + len(severities))


def picture_png(pixels: np.ndarray, scale: int = 1) -> bytes:
    """One uint8 picture (C, S, S) as a PNG, enlarged ``scale`` times (nearest: its pixels stay visible)."""
    buf = io.BytesIO()
    _picture(pixels, scale).save(buf, format="PNG")
    return buf.getvalue()


def _picture(pixels: np.ndarray, scale: int):  # -> PIL.Image.Image
    from PIL import Image

    a = np.asarray(pixels, dtype=np.uint8)
    img = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)), "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


def contact_sheet(pixels: np.ndarray, captions: list[tuple[str, ...]], cols: int = 8, tile: int = 96) -> bytes:
    """A grid of uint8 pictures (N, C, S, S), each enlarged to about ``tile`` px with its caption lines below
    it (Pillow's built-in font: nothing read from the system or fetched), as one PNG."""
    from PIL import Image, ImageDraw, ImageFont

    if len(pixels) != len(captions):
        raise ValueError(f"{len(pixels)} pictures but {len(captions)} captions")
    font = ImageFont.load_default()
    side = int(pixels.shape[-1])
    scale = max(1, round(tile / side))
    width = max(side * scale, tile)
    line = 12
    lines = max((len(c) for c in captions), default=0)
    cell_w, cell_h = width + 8, side * scale + 6 + lines * line + 6
    n = len(pixels)
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (picture, caption) in enumerate(zip(pixels, captions)):
        r, c = divmod(i, cols)
        x0, y0 = c * cell_w + 4, r * cell_h + 4
        img = _picture(picture, scale).convert("RGB")
        sheet.paste(img, (x0 + (width - img.width) // 2, y0))
        draw.rectangle([x0 + (width - img.width) // 2 - 1, y0 - 1, x0 + (width + img.width) // 2, y0 + img.height],
                       outline="#bbbbbb")
        for k, text in enumerate(caption):
            while len(text) > 1 and draw.textlength(text, font=font) > width:  # long class names: cut, marked
                text = text[:-2] + "…"
            draw.text((x0, y0 + img.height + 4 + k * line), text, fill="#b00020" if k == 1 else "black", font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _grid_png(tiles: np.ndarray, cols: int = 10, scale: int = 5, pad: int = 1) -> bytes:
    h, w = tiles.shape[1:3]
    rows = -(-len(tiles) // cols)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, *tiles.shape[3:]), dtype=np.float32)
    grid *= 0.0 if tiles.ndim == 3 else 1.0  # padding white after inversion (grey) / white (RGB)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = t
    return _tile_png(grid, scale)


def drop_by_corruption(robustness: pd.DataFrame) -> pd.DataFrame:
    """One row per corruption: each model's accuracy drop averaged over the severities, and at the strongest."""
    out = pd.DataFrame({"corruption": list(dict.fromkeys(robustness["corruption"]))})
    for n in (CHALLENGER, CHAMPION):
        part = robustness[robustness["model"] == n]
        if len(part):
            by = part.groupby("corruption", sort=False)
            out[f"{LABELS[n]} mean drop"] = out["corruption"].map(by["drop"].mean()).round(4)
            worst = part.loc[part.groupby("corruption", sort=False)["severity"].idxmax()].set_index("corruption")
            out[f"{LABELS[n]} drop at strongest"] = out["corruption"].map(worst["drop"]).round(4)
    return out


# --- rendering ---------------------------------------------------------------------------------


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def ci_text(iv) -> str:
    return f"{iv.estimate:.4f} [{iv.low:.4f}, {iv.high:.4f}]"


def _signed(iv) -> str:
    return f"{iv.estimate:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]"


@dataclass
class Section:
    id: str
    title: str
    # ("p", text) | ("table", DataFrame) | ("figure", Figure) | ("md-figure", Figure: markdown only) |
    # ("confusions", [(title, matrix)]) | ("issues", (DataFrame, [thumbnail PNG]))
    blocks: list[tuple[str, Any]]


def verdict_text(review: Review) -> str:
    level = f"{review.boot.level:.0%}"
    ch = review.champion
    if ch.version is None:
        head = (f"{NO_CHAMPION} {review.model_name}, so there is nothing to compare against; the gold-only "
                f"baseline and the weak model are the references below.")
    elif not review.has_champion:
        head = (f"The champion (v{ch.version}) could not be scored on this test split: {ch.error}. Comparisons "
                f"with it are omitted.")
    else:
        d = review.boot.delta(CHALLENGER, CHAMPION, "accuracy")
        f1 = review.boot.delta(CHALLENGER, CHAMPION, "macro_f1")
        assert d is not None and f1 is not None
        head = (f"Challenger vs champion v{ch.version}, both on the same {review.test_rows} gold test rows: accuracy "
                f"{review.scores[CHALLENGER].accuracy:.4f} vs {review.scores[CHAMPION].accuracy:.4f}, difference "
                f"{_signed(d.interval)} ({level} paired bootstrap interval, {review.boot.samples} resamples; the "
                f"challenger is ahead in {d.share_better:.0%} of them); macro-F1 difference {_signed(f1.interval)}. "
                f"Verdict: **{review.vs_champion}**"
                + (" (the interval includes 0: the difference may be resampling noise)."
                   if review.vs_champion == "no clear difference" else "."))
        same = all((x.interval.low, x.interval.high) == (0.0, 0.0) for x in review.boot.deltas if x.b == CHAMPION)
        if same:
            head += (" The two score identically on every resample: they make the same predictions (e.g. the same "
                     "data, config and seed retrained).")
    g = review.boot.delta(CHALLENGER, GOLD_ONLY, "accuracy")
    base = (f" Against the gold-only model of this run: accuracy difference {_signed(g.interval)}."
            if g is not None and review.shipped != "gold_only" else "")
    return head + base


def selection_blocks(review: Review) -> list[tuple[str, Any]]:
    """Which candidate shipped and why, from the gold rows only (each judged out of fold)."""
    if review.selection.empty:
        return [("p", "No selection was recorded: the final model is the challenger.")]
    table = review.selection.rename(columns={
        "oof_accuracy": "cross-fitted gold accuracy", "oof_accuracy_low": "low", "oof_accuracy_high": "high",
        "oof_log_loss": "log-loss", "chosen_minus_this": "shipped - this", "chosen_minus_this_low": "diff low",
        "chosen_minus_this_high": "diff high"})
    return [("p", f"**{review.selection_reason}**."),
            ("p", "Each candidate was trained as k fold models and a refit on all gold; every gold row was "
                  "predicted by the fold model that never trained on it, so these accuracies are honest "
                  "estimates on every gold row; intervals are 95% paired bootstrap intervals over the gold rows. "
                  "The test split below played no part in the choice."),
            ("table", table.round(4)),
            *([("p", f"Text features: {review.text_features}.")] if review.text_features else [])]


def _confusion_frame(cells: list[list[str]], classes: list) -> pd.DataFrame:
    """A source's confusion as a table: one row per true class, one column per vote."""
    frame = pd.DataFrame(cells, columns=[f"vote {c}" for c in classes])
    frame.insert(0, "true class", [str(c) for c in classes])
    return frame


def source_blocks(review: Review) -> list[tuple[str, Any]]:
    """Each source's confusion matrix measured on gold, with its 95% interval, where gold measured it; and
    beside it, where the weak training refined it on the weak rows, the confusion it learnt through."""
    blocks: list[tuple[str, Any]] = []
    for src in review.source_noise[:12]:
        classes = src["classes"]
        cells = [[f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in zip(*row)]
                 for row in zip(src["confusion"], src["confusion_low"], src["confusion_high"])]
        frame = _confusion_frame(cells, classes)
        frame.insert(1, "gold rows", [int(sum(r)) for r in src["counts"]])
        acc = (f"accuracy on its {src['gold_votes']} gold votes {src['accuracy']:.3f} [{src['accuracy_low']:.3f}, "
               f"{src['accuracy_high']:.3f}] (Wilson)" if src["basis"] == "gold"
               else "never voted on a gold row: estimated by Dawid-Skene EM on the other rows")
        abstain = ("; abstaining depends on the class (p = {:.3g}): P(abstain | class) {}".format(
            src["abstain_p_value"], ", ".join(f"{c}: {a:.2f}" for c, a in zip(classes, src["abstain"])))
            if src["abstain"] is not None else "")
        blocks += [("p", f"`{src['source']}`: {acc}{abstain}. P(vote | true class), smoothed toward its pooled "
                         "accuracy, with 95% intervals:"), ("table", frame)]
        refined = next((r for r in review.refined_noise if r["source"] == src["source"]), None)
        if refined is not None:
            means = _confusion_frame([[f"{m:.2f}" for m in row] for row in refined["confusion"]], classes)
            blocks += [("p", f"`{src['source']}` as the weak training learnt it: the same gold counts plus the "
                             "weak rows' expected counts under the gold-only model's p(class | x), by EM "
                             "(`weak_train.anchored_refine`):"), ("table", means)]
    return blocks


def gate_text(review: Review) -> str:
    if review.gate is None:
        return "Pending: the register stage applies the promotion gates after this report is written."
    g = review.gate
    return (f"**{g['verdict']}**: {g['reason']}. Registered as {review.model_name} v{g['version']} "
            f"with alias `{g['alias']}`.")


def sections(review: Review) -> list[Section]:
    s = review.scores
    names = [n for n in (CHALLENGER, CHAMPION, GOLD_ONLY, WEAK, FINAL) if n in s]
    out = [Section("summary", "Summary", [("p", verdict_text(review))]),
           Section("selection", "Which model shipped", selection_blocks(review)),
           Section("gate", "Promotion gate", [("p", gate_text(review))])]

    headline = pd.DataFrame([{"model": LABELS[n], "accuracy": ci_text(review.boot.intervals[n]["accuracy"]),
                              "macro-F1": ci_text(review.boot.intervals[n]["macro_f1"]),
                              "ECE": ci_text(review.boot.intervals[n]["ece"])} for n in names])
    deltas = pd.DataFrame([{"comparison": f"challenger - {LABELS[d.b]}", "metric": d.metric,
                            "difference [interval]": _signed(d.interval),
                            "challenger better in": f"{d.share_better:.1%} of resamples",
                            "clear?": "yes" if d.interval.excludes_zero() else "no (interval includes 0)"}
                           for d in review.boot.deltas])
    out.append(Section("headline", "Headline metrics", [
        ("p", f"On the frozen gold test split ({review.test_rows} rows). Each value: estimate "
              f"[{review.boot.level:.0%} percentile bootstrap interval, {review.boot.samples} resamples]. "
              f"ECE: expected calibration error ({ECE_BINS} bins), lower is better."),
        ("table", headline),
        ("p", "Differences on paired resamples (every model scored on the same resampled rows), so the "
              "interval of a difference says whether a gain is real or resampling noise. For ECE a negative "
              "difference is better."),
        ("table", deltas)]))

    recall = pd.DataFrame({"class": review.classes})
    for n in names:
        recall[LABELS[n]] = [s[n].report[str(c)]["recall"] for c in review.classes]
    if CHAMPION in s:
        recall["challenger - champion"] = recall[LABELS[CHALLENGER]] - recall[LABELS[CHAMPION]]
    recall["support"] = [int(s[CHALLENGER].report[str(c)]["support"]) for c in review.classes]
    out.append(Section("per-class", "Per-class recall", [("table", recall.round(4))]))

    fig = {f.name: f for f in review.figures}
    out.append(Section("calibration", "Calibration", [
        ("p", "Accuracy against confidence per bin; a well-calibrated model follows the diagonal. "
              + ", ".join(f"{LABELS[n]} ECE {s[n].ece:.4f}" for n in names) + "."),
        *([("figure", fig["calibration_curve_plot.png"])] if "calibration_curve_plot.png" in fig else [])]))
    out.append(Section("confusion", "Confusion matrices", [
        ("p", "Rows: gold class; columns: predicted class. Shading: share of the gold class (diagonal blue, "
              "errors red)."),
        ("confusions", [(f"{LABELS[n]}: accuracy {s[n].accuracy:.4f}", s[n].confusion) for n in names])]))

    rob: list[tuple[str, Any]] = [("p", f"Corruption suite: {review.robustness_note}. Severity in (0, 1]; "
                                        "drop = clean accuracy minus corrupted accuracy.")]
    if len(review.robustness):
        table = review.robustness.pivot_table(index=["corruption", "severity"], columns="model",
                                              values=["accuracy", "drop"], sort=False)
        flat = pd.DataFrame({"corruption": [i[0] for i in table.index], "severity": [i[1] for i in table.index]})
        for n in (CHALLENGER, CHAMPION):
            if ("accuracy", n) in table.columns:
                flat[f"{LABELS[n]} accuracy"] = table[("accuracy", n)].to_numpy().round(4)
                flat[f"{LABELS[n]} drop"] = table[("drop", n)].to_numpy().round(4)
        clean = review.robustness.groupby("model", sort=False)["clean_accuracy"].first()
        rob += [("p", "Clean accuracy: " + ", ".join(f"{LABELS[n]} {v:.4f}" for n, v in clean.items())
                 + ". Mean drop over the suite: " + ", ".join(
                     f"{LABELS[n]} {v:.4f}" for n, v in review.robustness.groupby("model", sort=False)["drop"].mean().items())
                 + "."), ("table", flat)]
        if review.robustness["corruption"].isin(PICTURE_CORRUPTIONS).any():  # pictures: the drop per corruption
            rob += [("p", "Accuracy drop per picture corruption, averaged over the severities (as ImageNet-C "
                          "reports its corruption errors):"), ("table", drop_by_corruption(review.robustness))]
            if "corruptions.png" in fig:
                rob.append(("figure", fig["corruptions.png"]))
        if "robustness.png" in fig:
            rob.append(("figure", fig["robustness.png"]))
    out.append(Section("robustness", "Robustness", rob))

    noise: list[tuple[str, Any]] = [
        ("p", "Each weak source measured against the gold rows it also labelled (noise rate = 1 - accuracy on "
              "gold). Noise estimate of this run: "
              + (f"{review.noise_estimate:.4f}" if review.noise_estimate is not None else "n/a")
              + (" (no source labelled a gold row: the share of weak rows believed mislabelled, below)"
                 if review.noise_basis == "model" else " (pooled over the sources, weighted by their gold rows)")
              + "."),
        ("table", review.sources.round(4)), *source_blocks(review)]
    if review.pseudo:
        p = review.pseudo
        interval = p.get("holdout_interval")
        noise += [("p", f"Pseudo labels the shipped model trained on ({p['policy']} thresholds, temperature "
                        f"{p['temperature']:.2f}" + (f", self-training round {p['round']}" if p["round"] else "")
                        + f"): kept {p['kept']} of {p['candidates']} candidates; precision on held-out gold rows "
                        f"{_f(p['holdout_precision'])}"
                        + (f" [{interval[0]:.4f}, {interval[1]:.4f}] (95% Wilson)" if interval else "")
                        + f" (coverage {_f(p['holdout_coverage'])}). Each fold's set is judged on its own fold's gold "
                          "rows, which neither its labelling model nor its thresholds saw; estimated = on the other "
                          "folds' gold rows, with which the thresholds were chosen (the Wilson lower bound must "
                          "reach the target).")]
        if len(review.pseudo_per_class):
            noise.append(("table", review.pseudo_per_class.round(4)))
    rate = review.label_issue_rate
    noise.append(("p", f"Weak training rows believed mislabelled: {len(review.issues)} of "
                       f"{review.weak_rows}" + (f" ({rate:.1%})" if rate is not None else "")
                       + f"; method: {review.issues_method}. The {min(review.top_k, len(review.issues))} most "
                       "suspicious are listed; all of them are in evaluation/label_issues.csv (by row_id), to fix "
                       "at the source."))
    if review.top_k and len(review.issues):
        noise.append(("issues", (review.issues.head(review.top_k), review.thumbnails)))
        if "label_issues.png" in fig:  # the html shows each row's image in the table (pictures: the sheet too)
            sheet = fig["label_issues.png"].alt == SHEET_ALT
            noise.append(("figure" if sheet else "md-figure", fig["label_issues.png"]))
    out.append(Section("label-noise", "Label noise", noise))

    details = pd.DataFrame([
        {"item": "model", "value": review.model_name},
        {"item": "pipeline run", "value": review.parent_run_id},
        {"item": "data version (train after governance + test)", "value": review.data_version},
        {"item": "test split digest (registry tag test_set_digest)", "value": review.test_digest},
        {"item": "champion", "value": f"v{review.champion.version} (trained in run {review.champion.run_id})"
                                      if review.champion.version else "none"},
        {"item": "report seconds", "value": ", ".join(f"{k} {v:.2f}" for k, v in review.seconds.items())},
    ])
    out.append(Section("details", "Run details", [("table", details)]))
    return out


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 16px}h1{font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:1.8em}table{border-collapse:collapse;margin:8px 0 16px;font-size:0.88em}th,td{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.verdict{background:#f6f8fa;border-left:4px solid #4c72b0;padding:8px 12px}
nav a{margin-right:12px}.row{display:flex;flex-wrap:wrap;gap:18px}table.confusion td{min-width:1.6em;text-align:center}
table.confusion caption{font-weight:600;text-align:left;padding-bottom:4px}img.tile{width:40px;border:1px solid #ccc}"""


def _md_inline(text: str) -> str:
    """**bold** and `code` of the markdown text, for HTML (everything else escaped)."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _confusion_html(title: str, matrix: np.ndarray, classes: list[int]) -> str:
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in classes)
    body = []
    for i, c in enumerate(classes):
        cells = []
        for j in range(len(classes)):
            v, a = int(matrix[i, j]), float(share[i, j])
            rgb = "76,114,176" if i == j else "196,78,82"
            alpha = a if i == j else min(1.0, 3 * a)
            style = f' style="background:rgba({rgb},{alpha:.2f})"' if v else ""
            cells.append(f"<td{style}>{v if v else ''}</td>")
        body.append(f"<tr><th>{html.escape(str(c))}</th>{''.join(cells)}</tr>")
    return (f'<table class="confusion"><caption>{html.escape(title)}</caption><tr><th>gold \\ pred</th>{head}</tr>'
            + "".join(body) + "</table>")


def render_html(review: Review) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Evaluation report: {html.escape(review.model_name)}</title>", f"<style>{_CSS}</style></head><body>",
             f"<h1>Evaluation report: {html.escape(review.model_name)}, pipeline run "
             f"<code>{html.escape(review.parent_run_id)}</code></h1>"]
    secs = sections(review)
    parts.append("<nav>" + "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in secs) + "</nav>")
    for s in secs:
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>')
        for kind, value in s.blocks:
            if kind == "p":
                cls = ' class="verdict"' if s.id in ("summary", "gate") else ""
                parts.append(f"<p{cls}>{_md_inline(value)}</p>")
            elif kind == "table":
                parts.append(value.to_html(index=False, border=0, na_rep="n/a", float_format=lambda v: f"{v:.4f}"))
            elif kind == "figure":
                parts.append(f'<figure><img alt="{html.escape(value.alt)}" src="{_data_uri(value.png)}">'
                             f"<figcaption>{html.escape(value.alt)}</figcaption></figure>")
            elif kind == "confusions":
                parts.append('<div class="row">' + "".join(_confusion_html(t, m, review.classes) for t, m in value)
                             + "</div>")
            elif kind == "issues":
                frame, thumbs = value
                shown = frame.astype(object).map(lambda v: html.escape(_f(v)))
                if thumbs:
                    name = next(n for n in ("image", "picture", "thumbnail", "shown") if n not in shown.columns)
                    shown.insert(2, name, [f'<img class="tile" alt="row image" src="{_data_uri(t)}">' for t in thumbs])
                parts.append(shown.to_html(index=False, border=0, escape=False))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def md_table(frame: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return _f(v).replace("|", "\\|")

    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    sep = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def render_markdown(review: Review) -> str:
    lines = [f"# Evaluation report: {review.model_name}, pipeline run `{review.parent_run_id}`", ""]
    for s in sections(review):
        lines += [f"## {s.title}", ""]
        for kind, value in s.blocks:
            if kind == "table":
                lines += [md_table(value), ""]
            elif kind in ("figure", "md-figure"):
                lines += [f"![{value.alt}]({value.name})", ""]
            elif kind == "confusions":
                for title, matrix in value:
                    frame = pd.DataFrame(matrix, columns=[f"pred {c}" for c in review.classes])
                    frame.insert(0, "gold", review.classes)
                    lines += [f"**{title}**", "", md_table(frame), ""]
            elif kind == "issues":
                lines += [md_table(value[0]), ""]
            else:
                lines += [value, ""]
    return "\n".join(lines)
