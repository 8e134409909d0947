"""Question-paper templates: drafting a new paper from a template shows how the papers
built from it performed (item analysis over the results of past exams)."""

import math
import random
import statistics

from celery import shared_task
from django.core.cache import cache

from admin_app.models import ExamAttempt


def item_analysis(matrix):
    """Per question: facility (share right) and point-biserial discrimination."""
    students = len(matrix)
    totals = [sum(row) for row in matrix]
    mean_total = statistics.fmean(totals)
    sd_total = statistics.pstdev(totals) or 1.0
    items = []
    for q in range(len(matrix[0])):
        column = [row[q] for row in matrix]
        right = sum(column)
        p = right / students
        if 0 < right < students:
            mean_right = sum(t for t, c in zip(totals, column) if c) / right
            r_pb = (mean_right - mean_total) / sd_total * math.sqrt(p / (1 - p))
        else:
            r_pb = 0.0
        items.append({"item": q + 1, "facility": round(p, 3), "discrimination": round(r_pb, 3)})
    return items


def kr20(matrix):
    """Kuder-Richardson 20: internal consistency of a right/wrong test."""
    k = len(matrix[0])
    totals = [sum(row) for row in matrix]
    variance = statistics.pvariance(totals)
    if variance == 0:
        return 0.0
    pq = 0.0
    for q in range(k):
        p = sum(row[q] for row in matrix) / len(matrix)
        pq += p * (1 - p)
    return k / (k - 1) * (1 - pq / variance)


def bootstrap_mean_ci(values, rounds=1000, seed=7):
    rng = random.Random(seed)
    n = len(values)
    means = []
    for _ in range(rounds):
        total = 0.0
        for _ in range(n):
            total += values[int(rng.random() * n)]
        means.append(total / n)
    means.sort()
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


@shared_task
def run_summary_metrics_task(exam_id):
    """Summary metrics of an exam's results, cached for the template draft screen."""
    rows = list(ExamAttempt.objects.filter(exam_id=exam_id)
                .exclude(responses="").values_list("responses", flat=True))
    matrix = [[1 if ch == "1" else 0 for ch in row] for row in rows]
    scores = [sum(r) for r in matrix]
    quartiles = statistics.quantiles(scores, n=4)
    summary = {
        "exam_id": exam_id,
        "students": len(scores),
        "mean": round(statistics.fmean(scores), 3),
        "median": statistics.median(scores),
        "stdev": round(statistics.stdev(scores), 3),
        "quartiles": quartiles,
        "kr20": round(kr20(matrix), 4),
        "mean_ci95": [round(x, 3) for x in bootstrap_mean_ci(scores)],
        "items": item_analysis(matrix),
    }
    cache.set(f"qp-template-metrics:{exam_id}", summary, timeout=3600)
    weakest = sorted(summary["items"], key=lambda i: i["discrimination"])[:3]
    return {k: summary[k] for k in ("students", "mean", "median", "stdev", "kr20")} | {
        "weakest_items": [i["item"] for i in weakest]}
