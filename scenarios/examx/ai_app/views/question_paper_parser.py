"""Parsing of question papers teachers upload as PDF: the questions, their options and
marks, the sections, and questions that repeat (often with small edits)."""

import os
import re
from itertools import groupby

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from ai_app.models import ParsedPaper
from utility import pdf

_QUESTION = re.compile(r"^Q\s*(\d+)[.)]\s+(.*)$")
_MARKS = re.compile(r"\s*\[(\d+)\s*marks?\]\s*$")
_OPTION = re.compile(r"^\(([a-d])\)\s+(.*)$")
_SECTION = re.compile(r"^SECTION\s+([A-Z])\b(.*)$", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+")


def page_lines(document):
    """Text lines of each page: runs on one baseline joined left to right."""
    lines = []
    for page in pdf.read_text(document):
        for _y, runs in groupby(page, key=lambda run: round(run[1], 1)):
            text = " ".join(run[3] for run in sorted(runs, key=lambda run: run[0]))
            lines.append(text.strip())
    return lines


def parse_questions(lines):
    questions, section = [], "A"
    current = None
    for line in lines:
        if match := _SECTION.match(line):
            section = match[1].upper()
            continue
        if match := _QUESTION.match(line):
            current = {"number": int(match[1]), "text": match[2], "section": section,
                       "marks": 1, "options": {}}
            questions.append(current)
        elif current and (match := _OPTION.match(line)):
            current["options"][match[1]] = match[2]
        elif current and line and not line.startswith(("Page ", "Total")):
            if current["options"]:
                last = sorted(current["options"])[-1]
                current["options"][last] += " " + line
            else:
                current["text"] += " " + line
    for question in questions:  # "[2 marks]" ends the question, often on a wrapped line
        if marks := _MARKS.search(question["text"]):
            question["marks"] = int(marks[1])
            question["text"] = question["text"][: marks.start()]
    return questions


def _shingles(text, k=3):
    words = _WORD.findall(text.lower())
    return {" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1))}


def near_duplicates(questions, threshold=0.6):
    """Pairs of questions whose word 3-shingles overlap more than ``threshold`` (Jaccard)."""
    sets = [_shingles(q["text"]) for q in questions]
    pairs = []
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            union = len(sets[i] | sets[j])
            if union and len(sets[i] & sets[j]) / union >= threshold:
                pairs.append((questions[i]["number"], questions[j]["number"]))
    return pairs


@shared_task
def process_paper_task(paper_id):
    paper = ParsedPaper.objects.get(pk=paper_id)
    with open(os.path.join(settings.MEDIA_ROOT, paper.source_path), "rb") as fh:
        document = fh.read()
    questions = parse_questions(page_lines(document))
    duplicates = near_duplicates(questions)
    sections = {}
    for q in questions:
        entry = sections.setdefault(q["section"], {"questions": 0, "marks": 0})
        entry["questions"] += 1
        entry["marks"] += q["marks"]
    incomplete = [q["number"] for q in questions if len(q["options"]) not in (0, 4)]
    ParsedPaper.objects.filter(pk=paper_id).update(
        status="parsed", questions_found=len(questions), sections=sections,
        duplicates=len(duplicates), parsed_at=timezone.now())
    return {"paper_id": paper_id, "questions": len(questions), "sections": sections,
            "duplicate_pairs": duplicates[:5], "incomplete": incomplete[:5]}
