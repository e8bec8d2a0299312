"""Model quality with delayed labels: ``monitor.drift.quality`` against hand-computed values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from monitor.capture import CaptureWriter, read_capture
from monitor.drift.quality import QualityResult, compute_quality, read_labels
from monitor.errors import DriftError
from monitor.modelserver import TrainedModel
from monitor.payload import Predictions, Rows
from monitor.spec import CaptureSpec, FeatureSpec, ModelSpec, OutputSpec

pytest.importorskip("sklearn")

T0 = pd.Timestamp("2024-01-01T00:00:00Z")

# Ten captured predictions r0..r9; eight labels: r0..r6 and r99 (no prediction).
# Joined (r0..r6):   label      1 1 1 0 1 1 0
#                    prediction 1 1 1 1 0 0 0
# -> TP=3 (r0-r2), FP=1 (r3), FN=2 (r4, r5), TN=1 (r6).
# accuracy = (3+1)/7, precision = 3/4, recall = 3/5, F1 = 2*3/(2*3+1+2) = 2/3.
IDS = [f"r{i}" for i in range(10)]
HARD = [1, 1, 1, 1, 0, 0, 0, 1, 0, 1]
LABEL_IDS = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r99"]
LABELS = [1, 1, 1, 0, 1, 1, 0, 1]


def predictions(values: Sequence[object], **extra: Sequence[object]) -> pd.DataFrame:
    return pd.DataFrame({"request_id": IDS, "prediction": values, **extra})


def labels(values: Sequence[object] = LABELS, ids: Sequence[str] = LABEL_IDS) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": ids,
            "label": values,
            "timestamp": [T0 + pd.Timedelta(seconds=i) for i in range(len(ids))],
        }
    )


def assert_binary_counts(result: QualityResult) -> None:
    assert result.rows == 7
    assert result.unmatched_predictions == 3
    assert result.unmatched_labels == 1
    assert result.metrics["accuracy"] == pytest.approx(4 / 7)
    assert result.metrics["precision"] == pytest.approx(3 / 4)
    assert result.metrics["recall"] == pytest.approx(3 / 5)
    assert result.metrics["f1"] == pytest.approx(2 / 3)


# --- classification ---------------------------------------------------------------


def test_binary_metrics_match_the_hand_computed_confusion_matrix() -> None:
    result = compute_quality(predictions(HARD), labels(), task="classification")
    assert_binary_counts(result)
    assert result.average == "binary"
    assert result.positive_label == 1
    d = result.to_dict()
    assert d["task"] == "classification"
    assert d["rows"] == 7 and d["unmatched_predictions"] == 3 and d["unmatched_labels"] == 1
    assert set(d["metrics"]) == {"accuracy", "precision", "recall", "f1"}
    # Hard 0/1 predictions carry no score: ROC AUC is skipped, not faked.
    assert d["skipped"]["roc_auc"].startswith("no_score")


@pytest.mark.parametrize(
    ("prediction_values", "label_values"),
    [
        pytest.param([str(v) for v in HARD], LABELS, id="captured strings vs int labels"),
        pytest.param([float(v) for v in HARD], LABELS, id="captured floats vs int labels"),
        pytest.param(HARD, [str(v) for v in LABELS], id="int predictions vs string labels"),
        pytest.param([f"{v}.0" for v in HARD], LABELS, id="'1.0' strings vs int labels"),
    ],
)
def test_label_types_are_aligned(
    prediction_values: list[object], label_values: list[object]
) -> None:
    result = compute_quality(
        predictions(prediction_values), labels(label_values), task="classification"
    )
    assert_binary_counts(result)
    assert result.positive_label == 1


def test_int_labels_from_csv_match_string_predictions_and_ids(tmp_path: Path) -> None:
    """A CSV of numeric ids and 0/1 labels joins the capture store's string ids and
    its categorical predictions "0"/"1"."""
    ids = [str(1000 + i) for i in range(10)]
    preds = pd.DataFrame({"request_id": ids, "prediction": [str(v) for v in HARD]})
    path = tmp_path / "labels.csv"
    path.write_text(
        "request_id,label,timestamp\n"
        + "".join(f"{1000 + i},{y},2024-01-02T00:00:0{i}Z\n" for i, y in enumerate(LABELS[:7]))
        + "99999,1,2024-01-02T00:00:09Z\n"
    )
    read = read_labels(path)
    assert read["request_id"].tolist()[0] == "1000"
    result = compute_quality(preds, read, task="classification")
    assert_binary_counts(result)


def test_string_classes_need_and_use_positive_label() -> None:
    names = {1: "malignant", 0: "benign"}
    preds = predictions([names[v] for v in HARD])
    labs = labels([names[v] for v in LABELS])
    result = compute_quality(preds, labs, task="classification", positive_label="malignant")
    assert_binary_counts(result)
    assert result.positive_label == "malignant"
    # Default for string classes: the larger one in sorted order ("malignant" > "benign").
    assert compute_quality(preds, labs, task="classification").positive_label == "malignant"
    # The other class as positive: TP=1 (r6), FP=2 (r4, r5), FN=1 (r3).
    flipped = compute_quality(preds, labs, task="classification", positive_label="benign")
    assert flipped.metrics["precision"] == pytest.approx(1 / 3)
    assert flipped.metrics["recall"] == pytest.approx(1 / 2)
    assert flipped.metrics["f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    assert flipped.metrics["accuracy"] == pytest.approx(4 / 7)


def test_positive_label_is_aligned_to_the_label_type() -> None:
    result = compute_quality(
        predictions([str(v) for v in HARD]), labels(), task="classification", positive_label="0"
    )
    assert result.positive_label == 0
    # Positive 0: TP=1 (r6), FP=2 (r4, r5), FN=1 (r3).
    assert result.metrics["precision"] == pytest.approx(1 / 3)


def test_a_positive_label_that_is_not_a_class_raises() -> None:
    with pytest.raises(DriftError, match="positive_label 'yes'"):
        compute_quality(predictions(HARD), labels(), task="classification", positive_label="yes")


def test_multiclass_uses_macro_averages() -> None:
    # Joined (r0..r6): label a a b b c c c ; prediction a b b b c a c
    # a: TP1 FP1 FN1 -> P 1/2 R 1/2 F1 1/2
    # b: TP2 FP1 FN0 -> P 2/3 R 1   F1 4/5
    # c: TP2 FP0 FN1 -> P 1   R 2/3 F1 4/5
    preds = predictions(["a", "b", "b", "b", "c", "a", "c", "a", "a", "a"])
    labs = labels(["a", "a", "b", "b", "c", "c", "c", "a"])
    result = compute_quality(preds, labs, task="classification")
    assert result.average == "macro"
    assert result.positive_label is None
    assert result.metrics["accuracy"] == pytest.approx(5 / 7)
    assert result.metrics["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert result.metrics["recall"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert result.metrics["f1"] == pytest.approx((1 / 2 + 4 / 5 + 4 / 5) / 3)
    assert result.skipped["roc_auc"].startswith("no_score")


def test_multiclass_precision_leaves_out_a_class_never_predicted() -> None:
    # label a b c, prediction a a a: precision a = 1/3, b and c undefined (left out);
    # recall a 1, b 0, c 0; F1 a = 1/2, b 0, c 0.
    preds = pd.DataFrame({"request_id": ["1", "2", "3"], "prediction": ["a", "a", "a"]})
    labs = pd.DataFrame({"request_id": ["1", "2", "3"], "label": ["a", "b", "c"]})
    result = compute_quality(preds, labs, task="classification")
    assert result.metrics["precision"] == pytest.approx(1 / 3)
    assert result.metrics["recall"] == pytest.approx(1 / 3)
    assert result.metrics["f1"] == pytest.approx(1 / 6)


def test_probability_predictions_give_roc_auc() -> None:
    # Joined probabilities 0.9 0.8 0.7 0.6 0.1 0.2 0.3 (>= 0.5 -> 1 1 1 1 0 0 0 = HARD).
    # Positives (r0,r1,r2,r4,r5) x negatives (r3 0.6, r6 0.3): 10 pairs, ranked right by
    # 0.9, 0.8, 0.7 against both (6), by 0.1 and 0.2 against neither -> AUC 6/10.
    probs = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.55, 0.4, 0.9]
    result = compute_quality(predictions(probs), labels(), task="classification")
    assert_binary_counts(result)
    assert result.metrics["roc_auc"] == pytest.approx(0.6)
    assert result.skipped == {}


def test_score_column_gives_roc_auc_with_hard_predictions() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.55, 0.4, 0.9]
    result = compute_quality(
        predictions([str(v) for v in HARD], proba=scores),
        labels(),
        task="classification",
        score_column="proba",
    )
    assert_binary_counts(result)
    assert result.metrics["roc_auc"] == pytest.approx(0.6)


def test_roc_auc_with_one_class_is_skipped_with_a_reason() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.55, 0.4, 0.9]
    result = compute_quality(
        predictions(HARD, proba=scores),
        labels([1] * 8),
        task="classification",
        score_column="proba",
    )
    assert "roc_auc" not in result.metrics
    assert result.skipped["roc_auc"].startswith("one_class")
    # Every label is 1: TP=4 (r0-r3), FP=0, FN=3 (r4-r6) -> precision 1, recall 4/7.
    assert result.metrics["precision"] == 1.0
    assert result.metrics["recall"] == pytest.approx(4 / 7)
    assert all(math.isfinite(v) for v in result.metrics.values())


def test_undefined_precision_and_recall_are_skipped_not_nan() -> None:
    # All labels 0 and all predictions 0: no positives anywhere.
    result = compute_quality(predictions([0] * 10), labels([0] * 8), task="classification")
    assert result.metrics == {"accuracy": 1.0}
    assert result.skipped["precision"] == "no_predicted_positives"
    assert result.skipped["recall"] == "no_actual_positives"
    assert result.skipped["f1"] == "no_positives"
    assert result.skipped["roc_auc"].startswith("no_score")


def test_a_batch_request_shares_its_label() -> None:
    """The capture store writes one row per input row: a batch request's rows share a
    request id, and each is scored against the request's label."""
    preds = pd.DataFrame({"request_id": ["a", "a", "b"], "prediction": [1, 0, 1]})
    labs = pd.DataFrame({"request_id": ["a", "b"], "label": [1, 1]})
    result = compute_quality(preds, labs, task="classification")
    assert result.rows == 3
    assert result.metrics["accuracy"] == pytest.approx(2 / 3)


def test_null_predictions_and_labels_are_dropped_and_counted() -> None:
    values: list[object] = [float(v) for v in HARD]
    values[7] = None  # r7 has a label but no prediction value
    labs = labels([*LABELS[:7], 1], [*LABEL_IDS[:7], "r7"])
    result = compute_quality(predictions(values), labs, task="classification")
    assert result.invalid_rows == 1
    assert result.rows == 7
    assert result.unmatched_predictions == 2
    assert result.metrics["accuracy"] == pytest.approx(4 / 7)


# --- regression ---------------------------------------------------------------------


def test_regression_mae_and_rmse_by_hand() -> None:
    preds = pd.DataFrame(
        {"request_id": ["1", "2", "3", "4", "5"], "prediction": [2.0, 4.0, 6.0, 8.0, 1.0]}
    )
    labs = pd.DataFrame({"request_id": ["1", "2", "3", "4", "6"], "label": [1, 4, 8, 5, 0]})
    # errors on 1..4: 1, 0, 2, 3 -> MAE 6/4 = 1.5; RMSE sqrt((1+0+4+9)/4) = sqrt(3.5)
    result = compute_quality(preds, labs, task="regression")
    assert result.rows == 4
    assert result.unmatched_predictions == 1 and result.unmatched_labels == 1
    assert result.metrics == {"mae": pytest.approx(1.5), "rmse": pytest.approx(math.sqrt(3.5))}
    assert result.skipped == {}
    d = result.to_dict()
    assert d["task"] == "regression" and d["average"] is None


def test_regression_drops_rows_that_are_not_numbers() -> None:
    preds = pd.DataFrame({"request_id": ["1", "2", "3"], "prediction": ["2.5", "x", "1"]})
    labs = pd.DataFrame({"request_id": ["1", "2", "3"], "label": [2.0, 1.0, math.inf]})
    result = compute_quality(preds, labs, task="regression")
    assert result.invalid_rows == 2
    assert result.rows == 1
    assert result.metrics == {"mae": 0.5, "rmse": 0.5}


# --- no overlap, duplicates, errors ---------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_zero_overlap_skips_every_metric(task: str) -> None:
    result = compute_quality(
        predictions(HARD),
        labels(ids=[f"x{i}" for i in range(8)]),
        task=task,  # type: ignore[arg-type]
    )
    assert result.rows == 0
    assert result.metrics == {}
    assert set(result.skipped.values()) == {"no_joined_rows"}
    assert result.unmatched_predictions == 10 and result.unmatched_labels == 8


def test_duplicate_labels_keep_the_latest_timestamp(tmp_path: Path) -> None:
    # r3 is first labelled 1 (wrong), corrected to 0 later; the correction is written
    # *before* the original in the file, so file order alone would pick the wrong one.
    df = labels()
    dup = pd.DataFrame(
        {"request_id": ["r3"], "label": [1], "timestamp": [T0 - pd.Timedelta(hours=1)]}
    )
    df = pd.concat([df, dup], ignore_index=True)
    path = tmp_path / "labels.parquet"
    df.to_parquet(path)
    read = read_labels(path)
    assert len(read) == 8
    assert read.set_index("request_id").loc["r3", "label"] == 0
    assert str(read["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert_binary_counts(compute_quality(predictions(HARD), read, task="classification"))
    # compute_quality dedupes labels that did not come through read_labels too.
    assert_binary_counts(compute_quality(predictions(HARD), df, task="classification"))


def test_csv_timestamps_may_be_unix_seconds(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("request_id,label,timestamp\n7,1,100\n7,0,200\n8,1,150\n")
    read = read_labels(path)
    assert read.set_index("request_id")["label"].to_dict() == {"7": 0, "8": 1}


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("labels.csv", "request_id,timestamp\n1,2024-01-01\n", "'label'"),
        ("labels.csv", "label,timestamp\n1,2024-01-01\n", "'request_id'"),
        ("labels.csv", "request_id,label\n1,1\n", "'timestamp'"),
        ("labels.parquet", "not parquet", "not a readable label file"),
        ("labels.json", "{}", "must be .parquet"),
        ("labels.csv", "request_id,label,timestamp\n1,1,yesterday\n", "cannot be read as times"),
    ],
)
def test_bad_label_files_raise_drift_error(
    tmp_path: Path, name: str, content: str, match: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DriftError, match=match) as info:
        read_labels(path)
    assert str(path) in str(info.value)


def test_a_missing_label_file_raises_drift_error(tmp_path: Path) -> None:
    with pytest.raises(DriftError, match="does not exist"):
        read_labels(tmp_path / "nope.csv")


def test_missing_columns_and_bad_task_raise_drift_error() -> None:
    with pytest.raises(DriftError, match="'prediction'"):
        compute_quality(predictions(HARD).drop(columns="prediction"), labels(), task="regression")
    with pytest.raises(DriftError, match="'label'"):
        compute_quality(predictions(HARD), labels().drop(columns="label"), task="regression")
    with pytest.raises(DriftError, match="score column 'p'"):
        compute_quality(predictions(HARD), labels(), task="classification", score_column="p")
    with pytest.raises(DriftError, match="task"):
        compute_quality(predictions(HARD), labels(), task="ranking")  # type: ignore[arg-type]


# --- end to end: the breast-cancer model through the capture store --------------------


def test_captured_breast_cancer_predictions_score_like_sklearn(
    tmp_path: Path, trained_model: TrainedModel
) -> None:
    """Predictions of the real model go through the capture store as a categorical
    output (strings "0"/"1"); labels arrive later as a CSV of ints, a few missing.
    Accuracy equals the model's held-out accuracy on the labelled rows."""
    import joblib
    import numpy as np
    from sklearn.metrics import accuracy_score, roc_auc_score

    model = joblib.load(trained_model.model_path)
    x = np.asarray(trained_model.x_test)
    y = np.asarray(trained_model.y_test)
    pred = model.predict(x)
    proba = model.predict_proba(x)[:, 1]

    spec = ModelSpec(
        name="bc",
        upstream="http://127.0.0.1:8080",
        features=[FeatureSpec(name=n, type="numerical") for n in trained_model.feature_names],
        outputs=[OutputSpec(name="*", type="categorical", classes=["0", "1"])],
        capture=CaptureSpec(dir=tmp_path / "capture"),
    )
    writer = CaptureWriter(spec, registry=CollectorRegistry())
    for i, row in enumerate(x):
        rows = Rows(
            n=1,
            columns={n: [float(v)] for n, v in zip(trained_model.feature_names, row, strict=True)},
        )
        writer.submit(rows, Predictions(outputs={"label": [int(pred[i])]}), str(5000 + i))
    writer.flush()
    writer.close()
    captured = read_capture(tmp_path / "capture", model="bc").to_pandas()
    assert captured["prediction"].dtype == object
    assert len(captured) == len(y)

    labelled = range(len(y) - 10)  # the last ten labels have not arrived yet
    path = tmp_path / "labels.csv"
    path.write_text(
        "request_id,label,timestamp\n"
        + "".join(f"{5000 + i},{y[i]},2024-01-02T00:00:00Z\n" for i in labelled)
    )
    result = compute_quality(captured, read_labels(path), task="classification")
    assert result.rows == len(y) - 10
    assert result.unmatched_predictions == 10 and result.unmatched_labels == 0
    idx = list(labelled)
    assert result.metrics["accuracy"] == pytest.approx(accuracy_score(y[idx], pred[idx]))
    assert result.metrics["accuracy"] > 0.9

    scored = captured.assign(proba=proba[captured["request_id"].astype(int) - 5000])
    result = compute_quality(scored, read_labels(path), task="classification", score_column="proba")
    assert result.metrics["roc_auc"] == pytest.approx(roc_auc_score(y[idx], proba[idx]))
