"""Classification metrics of an evaluation: accuracy and macro precision, recall and F1."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, and precision, recall and F1 averaged over the classes present in either
    array (scikit-learn's `average="macro"`; a class with no prediction has precision 0)."""
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.size == 0:
        return {"accuracy": float("nan"), "precision": float("nan"),
                "recall": float("nan"), "f1": float("nan")}
    classes = np.union1d(y_true, y_pred)
    precision, recall, f1 = [], [], []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        predicted = np.sum(y_pred == c)
        actual = np.sum(y_true == c)
        p = tp / predicted if predicted else 0.0
        r = tp / actual if actual else 0.0
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {"accuracy": float(np.mean(y_true == y_pred)),
            "precision": float(np.mean(precision)), "recall": float(np.mean(recall)),
            "f1": float(np.mean(f1))}


__all__ = ["classification_metrics"]
