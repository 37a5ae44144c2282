"""Independent float64 numpy references for the loss tests (loops over rows; no torch)."""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(x))


def clip(image: np.ndarray, text: np.ndarray, temperature: float) -> float:
    a, b = unit(image.astype(np.float64)), unit(text.astype(np.float64))
    n = len(a)
    i2t = [-log_softmax(np.array([a[i] @ b[j] for j in range(n)]) / temperature)[i] for i in range(n)]
    t2i = [-log_softmax(np.array([b[i] @ a[j] for j in range(n)]) / temperature)[i] for i in range(n)]
    return 0.5 * (np.mean(i2t) + np.mean(t2i))


def siglip(image: np.ndarray, text: np.ndarray, temperature: float, bias: float) -> float:
    a, b = unit(image.astype(np.float64)), unit(text.astype(np.float64))
    total = 0.0
    for i in range(len(a)):
        for j in range(len(b)):
            z = 1.0 if i == j else -1.0
            total += np.log1p(np.exp(-z * (a[i] @ b[j] / temperature + bias)))  # -log sigmoid
    return total / len(a)


def cross_entropy(teacher_probs: np.ndarray, student_logits: np.ndarray, student_temp: float) -> float:
    return float(-(teacher_probs * log_softmax(student_logits / student_temp)).sum())


def sinkhorn(logits: np.ndarray, temp: float, iterations: int) -> np.ndarray:
    """DINOv2's sinkhorn_knopp_teacher, written as in the paper's notation (Q is K x N)."""
    q = np.exp(logits.astype(np.float64) / temp).T
    k, n = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= n
    return (q * n).T


def sparc(
    patches: np.ndarray,
    tokens: np.ndarray,
    padding: np.ndarray,
    temperature: float,
    threshold: float | None = None,
    eps: float = 1e-8,
) -> float:
    per_sample = []
    for b in range(patches.shape[0]):
        p, t = patches[b].astype(np.float64), tokens[b].astype(np.float64)
        valid = [i for i in range(t.shape[0]) if not padding[b, i]]
        if not valid:
            continue
        cutoff = 1.0 / p.shape[0] if threshold is None else threshold
        grouped = []
        for i in valid:
            sim = np.array([t[i] @ p[k] for k in range(p.shape[0])])
            row = (sim - sim.min()) / (sim.max() - sim.min() + eps)
            row = np.where(row < cutoff, 0.0, row)
            row = row / max(row.sum(), eps)
            grouped.append(sum(row[k] * p[k] for k in range(p.shape[0])))
        g = unit(np.stack(grouped))
        e = unit(t[valid])
        losses = []
        for r in range(len(valid)):
            t2v = -log_softmax(np.array([e[r] @ g[c] for c in range(len(valid))]) / temperature)[r]
            v2t = -log_softmax(np.array([g[r] @ e[c] for c in range(len(valid))]) / temperature)[r]
            losses.append(0.5 * (t2v + v2t))
        per_sample.append(np.mean(losses))
    return float(np.mean(per_sample))


def koleo(x: np.ndarray, eps: float = 1e-8) -> float:
    u = unit(x.astype(np.float64))
    out = []
    for i in range(len(u)):
        best = max((j for j in range(len(u)) if j != i), key=lambda j: u[i] @ u[j])
        out.append(-np.log(np.linalg.norm(u[i] - u[best] + eps) + eps))  # pairwise_distance adds eps inside
    return float(np.mean(out))
