"""Export of approved question papers: one PDF per paper and set, zipped, to the store."""

import os
import random
import tempfile
import zipfile
from contextlib import contextmanager

from celery import shared_task
from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.http import require_POST

from admin_app.models import Exam, PaperQuestion, QuestionPaper
from utility import pdf, storage

SETS = ("A", "B", "C", "D")


@contextmanager
def working_directory(path):
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(settings.BASE_DIR)  # the project root, where the workers are started


def render_paper(exam, paper, questions, set_code, *, key=False):
    """One printable set: the questions (and their options) in this set's own order; the
    evaluator's copy (``key``) also gives the right option of each question."""
    order = list(questions)
    random.Random(f"{paper.code}-{set_code}").shuffle(order)
    doc = pdf.Document(f"{exam.code} {paper.title} (set {set_code})", size=10)
    doc.footer = f"{exam.code} / {paper.code} / set {set_code}"
    doc.text(exam.title.upper(), size=14, bold=True, align="center")
    doc.text(f"{paper.title} - Set {set_code}", size=12, bold=True, align="center")
    doc.text(f"Subject: {exam.subject.title()}    Date: {exam.starts_at:%d %b %Y}    "
             f"Time: {exam.starts_at:%H:%M}-{exam.ends_at:%H:%M}", align="center")
    doc.rule()
    doc.text("Instructions: answer all questions. Each question has exactly one correct "
             "option. There is no negative marking. Write your roll number on every page.",
             size=9)
    doc.rule()
    total = 0
    for number, question in enumerate(order, start=1):
        total += question.marks
        doc.space(4)
        doc.text(f"Q{number}. {question.text}  [{question.marks} mark"
                 f"{'s' if question.marks > 1 else ''}]", bold=True)
        options = list(question.options)
        random.Random(f"{set_code}-{question.pk}").shuffle(options)
        right = "?"
        for label, option in zip("abcd", options):
            doc.text(f"({label}) {option}", indent=18)
            if key and option == question.answer:
                right = label
        if key:
            doc.text(f"Answer: ({right}) - {question.marks} mark(s), no partial credit.",
                     bold=True, indent=18)
    doc.rule()
    doc.text(f"Total: {total} marks", bold=True, align="right")
    return doc.render(watermark="EVALUATOR COPY" if key else "CONFIDENTIAL")


@shared_task
def generate_question_paper_pdfs(exam_id):
    """Render every approved paper of the exam in each set, zip them and upload the zip."""
    exam = Exam.objects.get(pk=exam_id)
    papers = list(QuestionPaper.objects.filter(exam=exam, status__in=("approved", "exported")))
    with tempfile.TemporaryDirectory(prefix=f"qp-{exam.code}-") as workdir, \
            working_directory(workdir):  # the renderer and the zip write next to each other
        names = []
        for paper in papers:
            questions = [pq.question for pq in PaperQuestion.objects.filter(paper=paper)
                         .select_related("question")]
            for set_code in SETS:
                for key in (False, True):
                    name = f"{paper.code}-{set_code}{'-key' if key else ''}.pdf"
                    with open(name, "wb") as fh:
                        fh.write(render_paper(exam, paper, questions, set_code, key=key))
                    names.append(name)
        archive = f"{exam.code}-papers.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for name in names:
                zf.write(name)
        url, size = storage.upload_file(archive, f"{exam.code}/{archive}", "application/zip")
        QuestionPaper.objects.filter(pk__in=[p.pk for p in papers]).update(
            status="exported", archive_url=url)
    return {"exam": exam.code, "files": len(names), "bytes": size}


@require_POST
def export_papers(request, exam_id):
    generate_question_paper_pdfs.delay(exam_id)
    return JsonResponse({"queued": True}, status=202)
