from django.db import models


class ParsedPaper(models.Model):
    source_path = models.CharField(max_length=300)
    status = models.CharField(max_length=20, default="uploaded")
    questions_found = models.PositiveIntegerField(default=0)
    sections = models.JSONField(default=dict)
    duplicates = models.PositiveIntegerField(default=0)
    parsed_at = models.DateTimeField(null=True, blank=True)


class ExtractedQuestion(models.Model):
    upload_id = models.IntegerField(db_index=True)
    number = models.PositiveSmallIntegerField()
    text = models.TextField()
    marks = models.PositiveSmallIntegerField(default=1)
    options = models.JSONField(default=list)


class QuestionRequest(models.Model):
    """A teacher's "generate N questions on this topic" request from the web UI."""

    subject = models.CharField(max_length=50)
    topic = models.CharField(max_length=100)
    count = models.PositiveSmallIntegerField(default=5)
    status = models.CharField(max_length=20, default="pending")
    result = models.JSONField(default=list)
