""""Generate questions" in the teacher's question-bank screen."""

import json

from celery import shared_task

from ai_app.models import QuestionRequest
from utility import llm

SYSTEM = ("You write multiple-choice questions for school exams. Answer JSON: "
          '{"questions": [{"text": str, "options": [str, str, str, str], "answer": str, '
          '"difficulty": "easy"|"medium"|"hard"}]}.')


@shared_task
def generate_ai_questions_in_celery(request_id):
    request = QuestionRequest.objects.get(pk=request_id)
    QuestionRequest.objects.filter(pk=request_id).update(status="running")
    reply = llm.chat(SYSTEM, json.dumps({"subject": request.subject, "topic": request.topic,
                                         "count": request.count}), temperature=0.7)
    usable = [q for q in reply.get("questions", [])
              if q.get("text") and len(q.get("options", [])) == 4
              and q.get("answer") in q["options"]][: request.count]
    QuestionRequest.objects.filter(pk=request_id).update(status="done", result=usable)
    return {"request_id": request_id, "questions": len(usable)}
