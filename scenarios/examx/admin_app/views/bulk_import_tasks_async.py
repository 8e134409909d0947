"""Bulk import of questions from a spreadsheet export (CSV), done in the background."""

import csv
import hashlib
import io
import os
import re
import time
import unicodedata

from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.http import require_POST

from admin_app import upload_progress
from admin_app.models import Question

REQUIRED = ("subject", "question", "option_a", "option_b", "option_c", "option_d", "answer",
            "marks", "difficulty")
_SPACES = re.compile(r"\s+")
_LATEX = re.compile(r"\$([^$]+)\$")
_MARKS = re.compile(r"^\d{1,2}$")


def _clean(text):
    text = unicodedata.normalize("NFKC", text).replace("\u00a0", " ")
    text = _LATEX.sub(lambda m: "$" + m[1].strip() + "$", text)
    return _SPACES.sub(" ", text).strip()


def _fingerprint(text):
    words = sorted(set(re.findall(r"[a-z0-9]+", text.lower())))
    return hashlib.sha256(" ".join(words).encode()).hexdigest()


def _estimate_difficulty(text, options, declared):
    """Sheets often leave difficulty empty: guess it from length and vocabulary."""
    if declared in ("easy", "medium", "hard"):
        return declared
    words = text.split()
    long_words = sum(1 for w in words if len(w) > 8)
    spread = max(len(o) for o in options) - min(len(o) for o in options)
    score = len(words) / 12 + long_words / 3 + spread / 20
    return "easy" if score < 2 else "medium" if score < 4 else "hard"


def parse_sheet(raw):
    """Rows of the sheet as Question fields, and the errors of the rows that are wrong."""
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"the sheet has no column {', '.join(missing)}")
    rows, errors, seen = [], [], set()
    for number, record in enumerate(reader, start=2):
        text = _clean(record["question"])
        options = [_clean(record[f"option_{c}"]) for c in "abcd"]
        answer = _clean(record["answer"]).lower()
        if not text or not all(options):
            errors.append((number, "empty question or option"))
            continue
        if answer not in ("a", "b", "c", "d"):
            errors.append((number, f"answer must be a-d, not {answer!r}"))
            continue
        if not _MARKS.match(record["marks"].strip()):
            errors.append((number, "marks must be a whole number"))
            continue
        digest = _fingerprint(text + "|" + "|".join(options))
        if digest in seen:
            errors.append((number, "duplicate of an earlier row"))
            continue
        seen.add(digest)
        rows.append({
            "subject": _clean(record["subject"]).lower(), "text": text, "options": options,
            "answer": options["abcd".index(answer)], "marks": int(record["marks"]),
            "difficulty": _estimate_difficulty(text, options, record["difficulty"].strip()),
            "content_hash": digest,
        })
    return rows, errors


@shared_task(bind=True)
def bulk_upload_questions_task(self, upload_id, file_path):
    """Parse the uploaded sheet and insert its questions (a re-run replaces the upload's)."""
    with open(os.path.join(settings.MEDIA_ROOT, file_path), "rb") as fh:
        raw = fh.read()
    upload_progress.update(upload_id, state="parsing", file=file_path)
    rows, errors = parse_sheet(raw)
    upload_progress.update(upload_id, state="saving", rows=len(rows), errors=len(errors))
    with transaction.atomic():
        Question.objects.filter(upload_id=upload_id).delete()
        Question.objects.bulk_create(
            [Question(source="upload", upload_id=upload_id, **row) for row in rows],
            batch_size=500)
    upload_progress.update(upload_id, state="done", finished=time.time())
    return {"upload_id": upload_id, "created": len(rows), "errors": len(errors),
            "first_errors": errors[:3]}


@shared_task
def cleanup_old_upload_progress(max_age_hours=24):
    """Forget the progress of uploads nobody looked at for ``max_age_hours``."""
    index = cache.get(upload_progress.INDEX_KEY) or []
    cutoff = time.time() - max_age_hours * 3600
    kept, removed = [], 0
    for upload_id in index:
        state = cache.get(upload_progress.key(upload_id))
        if state is None or state.get("touched", 0) < cutoff:
            cache.delete(upload_progress.key(upload_id))
            removed += 1
        else:
            kept.append(upload_id)
    cache.set(upload_progress.INDEX_KEY, kept, timeout=None)
    return {"removed": removed, "kept": len(kept)}


@require_POST
def start_bulk_upload(request):
    upload = request.FILES["sheet"]
    upload_id = int(time.time() * 1000) % 2_000_000_000
    path = os.path.join("uploads", f"sheet_{upload_id}.csv")
    with open(os.path.join(settings.MEDIA_ROOT, path), "wb") as fh:
        for chunk in upload.chunks():
            fh.write(chunk)
    upload_progress.update(upload_id, state="queued", file=path)
    bulk_upload_questions_task.delay(upload_id, path)
    return JsonResponse({"upload_id": upload_id}, status=202)


def progress_view(request, upload_id):
    return JsonResponse(upload_progress.get(upload_id) or {"state": "unknown"})
