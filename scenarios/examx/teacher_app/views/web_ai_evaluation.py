"""Evaluation of answers written in the browser-proctored exam: the proctoring flags are
given to the model so it can discount answers pasted from elsewhere."""

import socket

from celery import shared_task

from teacher_app import evaluation

# The model takes long on big batches: a default timeout makes every socket wait for it.
LLM_SOCKET_TIMEOUT_S = 120


@shared_task
def process_web_student_batch(exam_id, student_ids):
    socket.setdefaulttimeout(LLM_SOCKET_TIMEOUT_S)
    scripts = evaluation.scripts_for(exam_id, student_ids, "web")
    flagged = sorted({s.pk for s in scripts if "paste" in s.proctor_flags})
    note = (f"Answers {flagged} were pasted into the exam window: score originality strictly."
            if flagged else "")
    scores = evaluation.evaluate(scripts, note)
    return {"exam_id": exam_id, "evaluated": len(scores), "flagged": len(flagged)}
