from django.db import models


class GenerationJob(models.Model):
    subject = models.CharField(max_length=50)
    topic = models.CharField(max_length=100)
    difficulty = models.CharField(max_length=10, default="medium")
    count = models.PositiveSmallIntegerField(default=10)
    status = models.CharField(max_length=20, default="queued")
    created_count = models.PositiveIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)
