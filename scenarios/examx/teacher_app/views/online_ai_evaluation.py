"""Evaluation of answers typed in the ExamX exam app."""

from celery import shared_task
from django.http import JsonResponse
from django.views.decorators.http import require_POST

from teacher_app import evaluation


@shared_task
def process_online_student_batch(exam_id, student_ids):
    scripts = evaluation.scripts_for(exam_id, student_ids, "online")
    scores = evaluation.evaluate(scripts)
    return {"exam_id": exam_id, "evaluated": len(scores), "total": sum(scores.values())}


@require_POST
def evaluate_online(request, exam_id):
    ids = [int(i) for i in request.POST.getlist("student")]
    for start in range(0, len(ids), 10):
        process_online_student_batch.delay(exam_id, ids[start:start + 10])
    return JsonResponse({"batches": (len(ids) + 9) // 10}, status=202)
