"""Enrichment of the question bank: the search index and topic tagging."""

import re
from collections import Counter

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from admin_app.models import Question, Topic

_WORD = re.compile(r"[a-z][a-z0-9]+")
STOPWORDS = frozenset(
    "the a an of to in is are was were be by for on with as at from that this which what "
    "when how why who whose its it into than then there their these those and or not".split())


def _stem(word):
    for suffix in ("ations", "ation", "ings", "ing", "ies", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def index_terms(question):
    words = _WORD.findall(f"{question.text} {' '.join(question.options)}".lower())
    terms = Counter(_stem(w) for w in words if w not in STOPWORDS)
    return " ".join(f"{term}:{count}" for term, count in sorted(terms.items()))


@shared_task
def save_question_index(first_id, last_id):
    """(Re)build the search index entries of questions first_id..last_id."""
    questions = list(Question.objects.filter(pk__gte=first_id, pk__lte=last_id)
                     .only("id", "text", "options"))
    now = timezone.now()
    for question in questions:
        question.search_index = index_terms(question)
        question.indexed_at = now
    with transaction.atomic():
        Question.objects.bulk_update(questions, ["search_index", "indexed_at"], batch_size=200)
    return {"indexed": len(questions)}


@shared_task
def assign_topics_to_questions(subject):
    """Tag the subject's untagged-or-stale questions with the topic whose keywords match best."""
    topics = [(t.pk, [k.strip() for k in t.keywords.split(",") if k.strip()])
              for t in Topic.objects.filter(subject=subject)]
    questions = list(Question.objects.filter(subject=subject, source="manual")
                     .only("id", "text", "topic_id"))
    changed = []
    for question in questions:
        text = question.text.lower()
        best, best_hits = None, 0
        for topic_id, keywords in topics:
            hits = sum(1 for k in keywords if k in text)
            if hits > best_hits:
                best, best_hits = topic_id, hits
        if best != question.topic_id:
            question.topic_id = best
            changed.append(question)
    if changed:
        Question.objects.bulk_update(changed, ["topic"], batch_size=200)
    per_topic = Counter(q.topic_id for q in questions)
    return {"subject": subject, "questions": len(questions), "tagged": sum(
        n for t, n in per_topic.items() if t is not None)}
