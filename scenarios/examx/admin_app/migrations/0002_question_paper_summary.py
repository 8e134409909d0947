"""The dashboards' question-paper summary: a materialized view on PostgreSQL (refreshed by
user_app.utility.refresh_question_paper_view); other databases query the tables directly."""

from django.db import migrations

from user_app.utility import SUMMARY_SQL


def create_view(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE MATERIALIZED VIEW question_paper_summary AS {SUMMARY_SQL}")
        schema_editor.execute("CREATE UNIQUE INDEX question_paper_summary_id "
                              "ON question_paper_summary (id)")


def drop_view(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP MATERIALIZED VIEW IF EXISTS question_paper_summary")


class Migration(migrations.Migration):
    dependencies = [("admin_app", "0001_initial")]
    operations = [migrations.RunPython(create_view, drop_view)]
