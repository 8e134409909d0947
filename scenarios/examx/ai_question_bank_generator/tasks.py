"""Nightly and on-demand growth of the question bank with AI-written questions."""

import json

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from admin_app.models import Question
from ai_question_bank_generator.models import GenerationJob
from utility import llm

SYSTEM = ("You write exam questions for a question bank. Answer JSON: "
          '{"questions": [{"text": str, "options": [str, str, str, str], "answer": str, '
          '"difficulty": "easy"|"medium"|"hard", "marks": int}]}.')


@shared_task
def run_question_generation_task(job_id):
    job = GenerationJob.objects.get(pk=job_id)
    GenerationJob.objects.filter(pk=job_id).update(status="running")
    reply = llm.chat(SYSTEM, json.dumps({"subject": job.subject, "topic": job.topic,
                                         "difficulty": job.difficulty, "count": job.count}))
    questions = []
    for item in reply.get("questions", [])[: job.count]:
        options = item.get("options") or []
        if len(options) != 4 or item.get("answer") not in options:
            continue
        questions.append(Question(
            subject=job.subject, text=item["text"].strip(), options=options,
            answer=item["answer"], marks=int(item.get("marks", 1)),
            difficulty=item.get("difficulty", job.difficulty), source="ai",
            generation_job_id=job.pk))
    with transaction.atomic():
        Question.objects.filter(generation_job_id=job.pk).delete()  # a re-run replaces them
        Question.objects.bulk_create(questions)
        GenerationJob.objects.filter(pk=job_id).update(
            status="done", created_count=len(questions), finished_at=timezone.now())
    return {"job_id": job_id, "created": len(questions)}
