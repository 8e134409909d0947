"""Closing exams: attempts still open when the exam ends are submitted automatically."""

import logging
import time

from celery import shared_task
from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from admin_app.models import Exam, ExamAttempt

log = logging.getLogger("examx.exams")

BATCH = 25
PAUSE_S = 0.02  # between batches, so the live exam's autosaves are not starved of the DB

# The exam being closed, for the helpers below and the log lines.
CURRENT_EXAM = None


def _score(responses):
    return float(sum(1 for ch in responses if ch == "1"))


def _submit_batch(attempts, now):
    for attempt in attempts:
        attempt.status = "auto_submitted"
        attempt.submitted_at = now
        attempt.score = _score(attempt.responses)
    ExamAttempt.objects.bulk_update(attempts, ["status", "submitted_at", "score"])


def _close_current_exam(now):
    exam = Exam.objects.get(pk=CURRENT_EXAM)
    exam.status = "closed"
    exam.auto_submitted_at = now
    exam.save(update_fields=["status", "auto_submitted_at"])
    counts = exam.attempts.aggregate(
        total=Count("id"), auto=Count("id", filter=Q(status="auto_submitted")))
    log.info("exam %s closed: %s attempts", exam.code, counts["total"])
    return exam.code, counts["total"]


@shared_task
def process_exam_auto_submit(exam_id):
    global CURRENT_EXAM
    CURRENT_EXAM = exam_id
    # The last autosaves of the students may still be in flight when the timer fires.
    time.sleep(settings.EXAMX_AUTOSAVE_GRACE_S)
    now = timezone.now()
    open_ids = list(ExamAttempt.objects.filter(exam_id=exam_id, status="in_progress")
                    .values_list("id", flat=True))
    submitted = 0
    for start in range(0, len(open_ids), BATCH):
        batch = list(ExamAttempt.objects.filter(pk__in=open_ids[start:start + BATCH]))
        _submit_batch(batch, now)
        submitted += len(batch)
        time.sleep(PAUSE_S)
    code, total = _close_current_exam(now)
    return {"exam": code, "attempts": total}


@shared_task
def process_exam_auto_submit_for_students(exam_id, student_ids):
    """Submit the open attempts of some students (their time ran out, or they were
    disconnected for too long)."""
    now = timezone.now()
    attempts = list(ExamAttempt.objects.filter(exam_id=exam_id, student_id__in=student_ids)
                    .exclude(status="submitted"))
    _submit_batch(attempts, now)
    return {"exam_id": exam_id, "students": len(student_ids),
            "scores": sorted(a.score for a in attempts)}
