"""Order copies: the signed office order that lists every candidate's room and seat, with
one attendance sheet per room. Amended (re-issued) when rooms change."""

import hashlib
import hmac
import os
from itertools import groupby

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from admin_app.models import ExamAttempt, OrderCopy
from utility import pdf

COLUMNS = (40, 70, 150, 80, 70, 89)  # points; the six columns of the candidate table
COPIES = ("OFFICE COPY", "CENTRE COPY", "INVIGILATOR COPY", "NOTICE BOARD")


def _code(roll_no, seat):
    """The verification code printed next to each candidate (checked at the gate)."""
    mac = hmac.new(settings.SECRET_KEY.encode(), f"{roll_no}|{seat}".encode(), hashlib.sha256)
    return mac.hexdigest()[:10].upper()


def _candidates(order):
    return list(ExamAttempt.objects.filter(exam_id=order.exam_id)
                .select_related("student").order_by("seat", "student__roll_no")
                .values_list("student__roll_no", "student__name", "student__batch", "seat"))


def render_order(order, candidates, *, amended=frozenset(), note=None):
    exam = order.exam
    doc = pdf.Document(f"Order copy {order.number}", size=8)
    doc.footer = f"Order {order.number} - {exam.code}"
    for copy in COPIES:
        doc.watermark = copy
        doc.page_break()
        doc.text("OFFICE OF THE CONTROLLER OF EXAMINATIONS", size=12, bold=True,
                 align="center")
        doc.text(f"Order No. {order.number} ({copy.lower()})", bold=True, align="center")
        doc.text(f"Sub: Seating arrangement for {exam.title} ({exam.code}) on "
                 f"{exam.starts_at:%d %B %Y}, {exam.starts_at:%H:%M} hrs.", size=9)
        if note:
            doc.text(f"Amendment: {note}. Rows marked * changed since the previous issue.",
                     size=9, bold=True)
        doc.rule()
        doc.row(("#", "Roll no", "Name", "Batch", "Seat", "Code"), COLUMNS, bold=True)
        for number, (roll, name, batch, seat) in enumerate(candidates, start=1):
            mark = "*" if roll in amended else ""
            doc.row((f"{number}{mark}", roll, name, batch, seat, _code(roll, seat)), COLUMNS)
        for room, group in groupby(candidates, key=lambda c: c[3].split("/")[0]):
            doc.page_break()
            doc.text(f"Attendance sheet - room {room}", size=11, bold=True, align="center")
            doc.row(("Seat", "Roll no", "Name", "Booklet no", "Signature", ""), COLUMNS,
                    bold=True)
            for roll, name, _batch, seat in group:
                doc.row((seat, roll, name, "", "", ""), COLUMNS)
                doc.rule()
        doc.space(20)
        doc.text("Controller of Examinations", bold=True, align="right")
    return doc


def _save(order, data, pages):
    folder = os.path.join(settings.MEDIA_ROOT, "order_copies")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{order.number.replace('/', '-')}.pdf")
    with open(path, "wb") as fh:
        fh.write(data)
    OrderCopy.objects.filter(pk=order.pk).update(
        pdf_path=path, sha256=hashlib.sha256(data).hexdigest(), pages=pages,
        version=order.version + 1, updated_at=timezone.now())
    return path


@shared_task
def generate_order_copy_pdf_task(order_id):
    order = OrderCopy.objects.select_related("exam").get(pk=order_id)
    candidates = _candidates(order)
    doc = render_order(order, candidates)
    _save(order, doc.render(), len(doc.pages))
    return {"order": order.number, "candidates": len(candidates), "pages": len(doc.pages)}


@shared_task
def update_order_copy_pdf_task(order_id, room_changes):
    """Move the candidates of closed rooms (``{"R101": "R205"}``) and re-issue the order,
    marking the rows that differ from the copy issued before."""
    order = OrderCopy.objects.select_related("exam").get(pk=order_id)
    with transaction.atomic():
        for old, new in room_changes.items():
            for attempt in ExamAttempt.objects.filter(exam_id=order.exam_id,
                                                      seat__startswith=f"{old}/"):
                attempt.seat = new + attempt.seat[len(old):]
                attempt.save(update_fields=["seat"])
    printed = {}
    if order.pdf_path and os.path.exists(order.pdf_path):
        with open(order.pdf_path, "rb") as fh:
            previous = fh.read()
        for page in pdf.read_text(previous):  # every copy lists them: the last one wins
            # a candidate row is six runs on one baseline: number, roll, name, batch, seat, code
            for _y, group in groupby(page, key=lambda run: run[1]):
                cells = [run[3] for run in group]
                if len(cells) == 6 and cells[0].rstrip("*").isdigit():
                    printed[cells[1]] = cells[4]
    candidates = _candidates(order)
    amended = {roll for roll, _n, _b, seat in candidates if printed.get(roll, seat) != seat}
    note = ", ".join(f"room {old} closed, candidates moved to {new}"
                     for old, new in sorted(room_changes.items()))
    doc = render_order(order, candidates, amended=frozenset(amended), note=note)
    _save(order, doc.render(), len(doc.pages))
    return {"order": order.number, "candidates": len(candidates), "pages": len(doc.pages)}
