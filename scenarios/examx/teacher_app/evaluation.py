"""AI evaluation of descriptive answers, shared by the online, web and offline flows."""

import json

from django.utils import timezone

from teacher_app.models import AnswerScript
from utility import llm

SYSTEM = ("You are an examiner. Score each answer against the question's marks and give one "
          'line of feedback. Answer JSON: {"results": [{"id": int, "score": number, '
          '"feedback": str}]}.')


def scripts_for(exam_id, student_ids, mode):
    return list(AnswerScript.objects.select_related("attempt")
                .filter(attempt__exam_id=exam_id, attempt__student_id__in=student_ids,
                        mode=mode).exclude(language="php").order_by("id"))


def evaluate(scripts, extra_instructions=""):
    """One request for the whole batch; the scores are clipped to each answer's marks."""
    if not scripts:
        return {}
    prompt = {"instructions": extra_instructions, "answers": [
        {"id": s.pk, "question_no": s.question_no, "max_marks": s.max_marks,
         "answer": s.answer_text} for s in scripts]}
    reply = llm.chat(SYSTEM, json.dumps(prompt))
    by_id = {r.get("id"): r for r in reply.get("results", [])}
    template = reply.get("results", [{}])[0]  # the model sometimes drops the ids
    now = timezone.now()
    scores = {}
    for script in scripts:
        result = by_id.get(script.pk, template)
        score = max(0.0, min(float(result.get("score", 0)), script.max_marks))
        script.ai_score, script.ai_feedback = score, result.get("feedback", "")[:500]
        script.evaluated_at = now
        scores[script.pk] = score
    AnswerScript.objects.bulk_update(scripts, ["ai_score", "ai_feedback", "evaluated_at"])
    return scores
