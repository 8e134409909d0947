"""Results of coding questions answered in PHP: scored by the PHP evaluator service."""

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from teacher_app import php_evaluator
from teacher_app.models import AnswerScript


@shared_task
def async_php_evaluate(script_id):
    script = AnswerScript.objects.get(pk=script_id, language="php")
    result = php_evaluator.evaluate(settings.PHP_EVALUATOR_URL, {
        "id": script.pk, "source": script.answer_text, "max_marks": script.max_marks,
        "tests": [{"stdin": "3 4", "expected": "7"}, {"stdin": "10 -2", "expected": "8"}],
    })
    passed = sum(1 for case in result.get("cases", []) if case.get("passed"))
    score = round(script.max_marks * passed / max(1, len(result.get("cases", []))), 1)
    AnswerScript.objects.filter(pk=script_id).update(
        ai_score=score, ai_feedback=result.get("summary", ""), evaluated_at=timezone.now())
    return {"script_id": script_id, "passed": passed, "score": score}
