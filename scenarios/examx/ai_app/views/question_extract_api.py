"""Questions extracted from a typed document (Markdown or plain text) a teacher pastes or
uploads; the teacher reviews them before they go to the bank."""

import os
import re

from celery import shared_task
from django.conf import settings
from django.db import transaction

from ai_app.models import ExtractedQuestion

_BLOCK = re.compile(r"^\s*(\d+)[.)]\s+", re.MULTILINE)
_OPTION = re.compile(r"^\s*[-*]?\s*\(?([a-dA-D])[.)]\s+(.+)$", re.MULTILINE)
_MARKS = re.compile(r"\((\d+)\s*marks?\)", re.IGNORECASE)


def split_questions(text):
    starts = list(_BLOCK.finditer(text))
    for match, following in zip(starts, [*starts[1:], None]):
        body = text[match.end(): following.start() if following else len(text)].strip()
        options = [m[2].strip() for m in _OPTION.finditer(body)]
        stem = _OPTION.split(body)[0].strip() if options else body
        marks = _MARKS.search(stem)
        yield {"number": int(match[1]), "text": _MARKS.sub("", stem).strip(),
               "marks": int(marks[1]) if marks else 1, "options": options}


@shared_task
def extract_questions_task(upload_id, file_path):
    with open(os.path.join(settings.MEDIA_ROOT, file_path), encoding="utf-8") as fh:
        text = fh.read()
    found = list(split_questions(text))
    with transaction.atomic():
        ExtractedQuestion.objects.filter(upload_id=upload_id).delete()
        ExtractedQuestion.objects.bulk_create(
            [ExtractedQuestion(upload_id=upload_id, **q) for q in found])
    return {"upload_id": upload_id, "questions": len(found),
            "with_options": sum(1 for q in found if q["options"])}
