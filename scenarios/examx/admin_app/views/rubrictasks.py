"""AI-drafted marking rubrics for descriptive questions."""

import json

from celery import shared_task
from django.utils import timezone

from admin_app.models import Rubric
from utility import llm

SYSTEM = ("You are an experienced examiner. Write a marking rubric for the question as JSON: "
          '{"rubric": [{"criterion": str, "marks": int}], "model_answer": str}.')


@shared_task
def generate_ai_content_task(rubric_id):
    rubric = Rubric.objects.select_related("question").get(pk=rubric_id)
    question = rubric.question
    Rubric.objects.filter(pk=rubric_id).update(status="generating")
    content = llm.chat(SYSTEM, json.dumps({"question": question.text, "marks": question.marks}))
    criteria = content.get("rubric") or []
    scale = question.marks / max(1, sum(c.get("marks", 0) for c in criteria))
    for criterion in criteria:  # the model's marks rarely add up to the question's
        criterion["marks"] = round(criterion.get("marks", 0) * scale, 1)
    Rubric.objects.filter(pk=rubric_id).update(
        status="ready", generated_at=timezone.now(),
        content={"rubric": criteria, "model_answer": content.get("model_answer", "")})
    return {"rubric_id": rubric_id, "criteria": len(criteria)}
