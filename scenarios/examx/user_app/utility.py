"""Account mails: password resets."""

from celery import shared_task
from django.conf import settings
from django.core import signing
from django.core.mail import send_mail
from django.utils import timezone

from user_app.models import Account
from utility.tenancy import brand


@shared_task
def forgot_password_mail(account_id):
    account = Account.objects.get(pk=account_id)
    token = signing.dumps({"account": account.pk, "purpose": "reset"}, salt="password-reset")
    school = brand()
    send_mail(
        subject=f"{school}: reset your ExamX password",
        message=(f"Hello {account.name},\n\nSomeone (hopefully you) asked to reset the password "
                 f"of your {school} account on ExamX. Open this link within an hour:\n\n"
                 f"{settings.FRONTEND_URL}/reset-password/{token}\n\n"
                 f"If it was not you, ignore this mail.\n\n{school} via ExamX"),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[account.email],
    )
    Account.objects.filter(pk=account_id).update(reset_sent_at=timezone.now())
    return {"account_id": account_id, "sent": True}


@shared_task
def refresh_question_paper_view(concurrently=False):
    """Refresh the question-paper summary behind the dashboards.

    On PostgreSQL it is a materialized view, refreshed with the DBA role (PG_DSN), since
    the app's own role does not own it. On SQLite the dashboard query runs directly.
    """
    from django.db import connection

    if settings.PG_DSN:
        import psycopg2

        conn = psycopg2.connect(settings.PG_DSN)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("REFRESH MATERIALIZED VIEW "
                            + ("CONCURRENTLY " if concurrently else "")
                            + "question_paper_summary")
                cur.execute("SELECT count(*) FROM question_paper_summary")
                rows = cur.fetchone()[0]
        finally:
            conn.close()
        return {"view": "question_paper_summary", "rows": rows}
    with connection.cursor() as cur:
        cur.execute(SUMMARY_SQL)
        rows = cur.fetchall()
    return {"view": "question_paper_summary", "rows": len(rows)}


SUMMARY_SQL = """
SELECT p.id, p.code, p.status, count(pq.id) AS questions, coalesce(sum(q.marks), 0) AS marks
FROM admin_app_questionpaper p
LEFT JOIN admin_app_paperquestion pq ON pq.paper_id = p.id
LEFT JOIN admin_app_question q ON q.id = pq.question_id
GROUP BY p.id, p.code, p.status
"""
