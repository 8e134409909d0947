"""Customer onboarding: invitations and per-customer schema changes."""

from celery import shared_task
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import connection, transaction
from django.utils import timezone
from django.utils.html import escape

from superadmin_app.models import Customer, SchemaChange
from utility.tenancy import brand


@shared_task
def send_customer_invite_email(customer_id):
    customer = Customer.objects.get(pk=customer_id)
    link = f"{settings.FRONTEND_URL}/onboarding/{customer.schema_name}"
    text = (f"Dear {customer.name},\n\nYour ExamX workspace is ready. Finish the setup here:\n"
            f"{link}\n\n{brand()} team")
    html = (f"<p>Dear {escape(customer.name)},</p><p>Your ExamX workspace is ready. "
            f'<a href="{link}">Finish the setup</a>.</p><p>{escape(brand())} team</p>')
    mail = EmailMultiAlternatives(f"Welcome to ExamX, {customer.name}", text,
                                  settings.DEFAULT_FROM_EMAIL, [customer.contact_email])
    mail.attach_alternative(html, "text/html")
    mail.send()
    Customer.objects.filter(pk=customer_id).update(invited_at=timezone.now())
    return {"customer_id": customer_id, "sent": True}


@shared_task
def run_database_migration(customer_id):
    """Give a customer its own results table: created on a scratch table, altered, indexed
    and backfilled there, then swapped in."""
    customer = Customer.objects.get(pk=customer_id)
    table = f"results_{customer.schema_name}"
    scratch = f"{table}_scratch"
    qn = connection.ops.quote_name
    statements = [
        f"DROP TABLE IF EXISTS {qn(scratch)}",
        f"DROP INDEX IF EXISTS {qn(scratch + '_attempt')}",
        f"CREATE TABLE {qn(scratch)} (id INTEGER PRIMARY KEY, attempt_id INTEGER NOT NULL, "
        f"score REAL)",
        f"ALTER TABLE {qn(scratch)} ADD COLUMN graded_at VARCHAR(32)",
        f"ALTER TABLE {qn(scratch)} ADD COLUMN grade VARCHAR(2)",
        f"CREATE INDEX {qn(scratch + '_attempt')} ON {qn(scratch)} (attempt_id)",
        f"INSERT INTO {qn(scratch)} (id, attempt_id, score, grade) "
        f"SELECT id, id, score, CASE WHEN score >= 30 THEN 'A' WHEN score >= 20 THEN 'B' "
        f"ELSE 'C' END FROM admin_app_examattempt WHERE score IS NOT NULL",
        f"DROP TABLE IF EXISTS {qn(table)}",
        f"ALTER TABLE {qn(scratch)} RENAME TO {qn(table)}",
    ]
    with transaction.atomic(), connection.cursor() as cur:
        for sql in statements:
            cur.execute(sql)
        cur.execute(f"SELECT count(*) FROM {qn(table)}")
        rows = cur.fetchone()[0]
        SchemaChange.objects.create(customer=customer, name="results_table",
                                    statements=statements, applied_at=timezone.now())
    return {"table": table, "rows": rows}
