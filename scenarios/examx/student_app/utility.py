"""Running students' programs on the Judge0 sandbox (coding questions and practice)."""

import requests
from celery import shared_task
from django.conf import settings

from student_app.models import CodeSubmission


@shared_task(autoretry_for=(requests.ConnectionError,), retry_backoff=True, max_retries=3)
def execute_student_code_task(submission_id):
    submission = CodeSubmission.objects.get(pk=submission_id)
    reply = requests.post(
        f"{settings.JUDGE0_URL}/submissions",
        params={"base64_encoded": "false", "wait": "true"},
        json={"language_id": submission.language_id, "source_code": submission.source,
              "stdin": submission.stdin, "expected_output": submission.expected_output,
              "cpu_time_limit": 2, "memory_limit": 128000},
        timeout=30,
    )
    reply.raise_for_status()
    result = reply.json()
    status = result["status"]["description"]
    CodeSubmission.objects.filter(pk=submission_id).update(
        status=status, stdout=result.get("stdout") or "", token=result.get("token", ""),
        time_ms=float(result.get("time") or 0) * 1000)
    return {"submission_id": submission_id, "status": status}
