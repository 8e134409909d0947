"""The demo database: migrated and filled with a small school's data when a worker starts.

Deterministic (fixed seeds), so every audit of the demo starts from the same state.
Idempotent: an already-filled database is left alone.
"""

import csv
import io
import os
import random
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.db import connections, transaction
from django.utils import timezone

SUBJECTS = {
    "physics": ["motion velocity acceleration", "force newton momentum",
                "energy work power", "current voltage resistance"],
    "chemistry": ["atom electron proton", "acid base salt", "bond covalent ionic",
                  "reaction rate catalyst"],
    "mathematics": ["equation quadratic roots", "triangle angle similar",
                    "probability event chance", "mean median mode"],
}
TOPIC_NAMES = {
    "physics": ["Kinematics", "Laws of motion", "Work and energy", "Electricity"],
    "chemistry": ["Atomic structure", "Acids and bases", "Chemical bonding", "Kinetics"],
    "mathematics": ["Algebra", "Geometry", "Probability", "Statistics"],
}
FIRST = ["Aarav", "Diya", "Ishaan", "Meera", "Kabir", "Ananya", "Rohan", "Saanvi", "Vihaan",
         "Aditi", "Arjun", "Kavya", "Reyansh", "Tara", "Dev", "Nisha"]
LAST = ["Sharma", "Iyer", "Patel", "Reddy", "Nair", "Gupta", "Khan", "Das", "Menon", "Rao"]
FILLER = ("which of the following best describes the relation between the quantities when "
          "the system is observed carefully under standard conditions in a school laboratory "
          "experiment with measured values recorded in the table given below").split()


def _sentence(rng, subject, words=14):
    keywords = rng.choice(SUBJECTS[subject]).split()
    picked = rng.sample(FILLER, words - 2) + rng.sample(keywords, 2)
    rng.shuffle(picked)
    return (" ".join(picked)).capitalize() + "?"


def _remove_stale_data_dirs():
    """Data folders of demo processes that are gone."""
    for path in Path(tempfile.gettempdir()).glob("examx-*"):
        pid = path.name.removeprefix("examx-")
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass


def prepare():
    os.makedirs(settings.MEDIA_ROOT, exist_ok=True)
    if not os.environ.get("EXAMX_DATA_DIR"):
        _remove_stale_data_dirs()
    call_command("migrate", verbosity=0, interactive=False)
    from admin_app.models import Exam

    if not Exam.objects.exists():
        with transaction.atomic():
            _fill(random.Random(2024))
    _write_uploads(random.Random(7))
    connections.close_all()  # opened outside any task: Celery's fixup would never close it


def _fill(rng):
    from admin_app.models import (
        Exam,
        ExamAttempt,
        OrderCopy,
        PaperQuestion,
        Question,
        QuestionPaper,
        Rubric,
        Topic,
    )
    from ai_app.models import ParsedPaper, QuestionRequest
    from ai_question_bank_generator.models import GenerationJob
    from student_app.models import CodeSubmission, Student
    from superadmin_app.models import Customer
    from teacher_app.models import AnswerScript
    from user_app.models import Account

    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    for subject, names in TOPIC_NAMES.items():
        Topic.objects.bulk_create(
            Topic(subject=subject, name=name, keywords=", ".join(SUBJECTS[subject][i].split()))
            for i, name in enumerate(names))
    questions = []
    for number in range(300):
        subject = list(SUBJECTS)[number % 3]
        options = [" ".join(rng.sample(FILLER, 3)) for _ in range(4)]
        questions.append(Question(subject=subject, text=_sentence(rng, subject),
                                  options=options, answer=options[0],
                                  marks=rng.choice([1, 1, 2, 4]),
                                  difficulty=rng.choice(["easy", "medium", "hard"])))
    questions = Question.objects.bulk_create(questions)
    exams = [Exam.objects.create(
        code=f"EX{24000 + i}", title=f"{subject.title()} term examination {i}",
        subject=subject, status="live" if i < 3 else "closed",
        starts_at=now - timedelta(hours=3), ends_at=now - timedelta(hours=1))
        for i, subject in enumerate(["physics", "chemistry", "mathematics"], start=1)]
    for exam in exams:
        for code in ("P1", "P2"):
            paper = QuestionPaper.objects.create(
                exam=exam, code=f"{exam.code}-{code}", title=f"Paper {code[1]}",
                status="approved", template_code=f"T-{exam.subject[:4].upper()}")
            pool = [q for q in questions if q.subject == exam.subject]
            PaperQuestion.objects.bulk_create(
                PaperQuestion(paper=paper, question=q, position=i)
                for i, q in enumerate(rng.sample(pool, 45), start=1))
    students = Student.objects.bulk_create(
        Student(roll_no=f"R{10000 + i}", name=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                email=f"student{i}@greenfield.example", batch=f"10-{'ABCD'[i % 4]}")
        for i in range(600))
    attempts = []
    for exam, count in ((exams[0], 150), (exams[1], 150), (exams[2], 600)):
        ability = {s.pk: rng.gauss(0, 1) for s in students[:count]}
        difficulty = [rng.gauss(0, 1) for _ in range(40)]
        for index, student in enumerate(students[:count]):
            responses = "".join(
                "1" if rng.random() < 1 / (1 + 2.718 ** (difficulty[q] - ability[student.pk]))
                else "0" for q in range(40))
            attempts.append(ExamAttempt(
                exam=exam, student=student, status="in_progress",
                seat=f"R{101 + index // 30}/{index % 30 + 1:02d}",
                started_at=exam.starts_at, responses=responses))
    attempts = ExamAttempt.objects.bulk_create(attempts)
    OrderCopy.objects.bulk_create(OrderCopy(exam=exams[2], number=f"COE/{exams[2].code}/{n}")
                                  for n in (1, 2))
    scripts = []
    for attempt in attempts[:12]:
        for mode in ("online", "web", "offline"):
            text = " ".join(rng.sample(FILLER, 18))
            if mode == "offline":
                text = text.replace(" the ", " the  ||  ")
            scripts.append(AnswerScript(
                attempt=attempt, question_no=1, mode=mode, answer_text=text,
                proctor_flags=["paste"] if mode == "web" and attempt.pk % 4 == 0 else []))
    for attempt in attempts[:2]:
        scripts.append(AnswerScript(
            attempt=attempt, question_no=7, mode="online", language="php",
            answer_text='<?php [$a, $b] = explode(" ", trim(fgets(STDIN))); echo $a + $b;'))
    AnswerScript.objects.bulk_create(scripts)
    CodeSubmission.objects.bulk_create([
        CodeSubmission(student=students[0], language_id=71,
                       source="a, b = map(int, input().split())\nprint(a + b)",
                       stdin="3 4", expected_output="7"),
        CodeSubmission(student=students[1], language_id=54,
                       source="#include <iostream>\nint main(){int a,b;std::cin>>a>>b;"
                              "std::cout<<a*b;}", stdin="6 7", expected_output="42"),
    ])
    Rubric.objects.bulk_create(Rubric(question=q) for q in questions[:2])
    QuestionRequest.objects.bulk_create([
        QuestionRequest(subject="physics", topic="Electricity", count=3),
        QuestionRequest(subject="chemistry", topic="Acids and bases", count=2)])
    GenerationJob.objects.bulk_create([
        GenerationJob(subject="mathematics", topic="Probability", count=3),
        GenerationJob(subject="physics", topic="Kinematics", count=3, difficulty="hard")])
    ParsedPaper.objects.bulk_create(ParsedPaper(source_path=f"papers/paper_{n}.pdf")
                                    for n in (1, 2))
    Account.objects.bulk_create([
        Account(email="asha.iyer@greenfield.example", name="Asha Iyer"),
        Account(email="vikram.rao@greenfield.example", name="Vikram Rao", role="admin")])
    Customer.objects.bulk_create([
        Customer(name="Greenfield Public School", contact_email="office@greenfield.example",
                 schema_name="greenfield"),
        Customer(name="Riverside Academy", contact_email="admin@riverside.example",
                 schema_name="riverside")])


def _write_uploads(rng):
    """Files teachers uploaded: question sheets, scanned papers, typed question lists."""
    from utility import pdf

    media = Path(settings.MEDIA_ROOT)
    for folder in ("uploads", "papers", "extract"):
        (media / folder).mkdir(parents=True, exist_ok=True)
    for sheet in (1, 2):
        path = media / "uploads" / f"questions_sheet_{sheet}.csv"
        if path.exists():
            continue
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["subject", "question", "option_a", "option_b", "option_c",
                         "option_d", "answer", "marks", "difficulty"])
        for row in range(900):
            subject = list(SUBJECTS)[row % 3]
            options = [" ".join(rng.sample(FILLER, 2 + row % 3)) for _ in range(4)]
            answer = "abcd"[row % 4] if row % 97 else "e"  # a few bad rows, as in real sheets
            writer.writerow([subject.title(), _sentence(rng, subject, 10 + row % 9), *options,
                             answer, str(1 + row % 4), "" if row % 3 else "medium"])
        path.write_text(out.getvalue(), encoding="utf-8")
    for paper in (1, 2):
        path = media / "papers" / f"paper_{paper}.pdf"
        if path.exists():
            continue
        doc = pdf.Document(f"Model paper {paper}", size=10)
        number = 0
        for section in "ABC":
            doc.text(f"SECTION {section}", bold=True)
            for _ in range(110):
                number += 1
                subject = list(SUBJECTS)[number % 3]
                marks = {"A": 1, "B": 2, "C": 4}[section]
                doc.text(f"Q{number}. {_sentence(rng, subject, 16)} [{marks} marks]")
                for label in "abcd":
                    doc.text(f"({label}) {' '.join(rng.sample(FILLER, 3))}", indent=18)
        path.write_bytes(doc.render())
    for upload in (1, 2):
        path = media / "extract" / f"upload_{upload}.md"
        if path.exists():
            continue
        lines = [f"# Unit test {upload}", ""]
        for number in range(1, 16):
            subject = list(SUBJECTS)[number % 3]
            lines.append(f"{number}. {_sentence(rng, subject)} ({1 + number % 3} marks)")
            if number % 2:
                lines += [f"   - ({c}) {' '.join(rng.sample(FILLER, 3))}" for c in "abcd"]
            lines.append("")
        path.write_text("\n".join(lines), encoding="utf-8")
