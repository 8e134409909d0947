"""Evaluation of handwritten answer sheets, scanned and OCR'd at the exam centre."""

import re

from celery import shared_task

from teacher_app import evaluation

_OCR_NOISE = re.compile(r"[|~_]{2,}|\s{2,}")


@shared_task
def process_offline_student_batch(exam_id, student_ids):
    scripts = evaluation.scripts_for(exam_id, student_ids, "offline")
    for script in scripts:  # the OCR leaves rulings and runs of blanks behind
        script.answer_text = _OCR_NOISE.sub(" ", script.answer_text).strip()
    scores = evaluation.evaluate(scripts, "The answers were handwritten and OCR'd: ignore "
                                          "spelling mistakes the OCR may have introduced.")
    return {"exam_id": exam_id, "evaluated": len(scores), "total": sum(scores.values())}
