from django.db import models


class AnswerScript(models.Model):
    attempt = models.ForeignKey("admin_app.ExamAttempt", on_delete=models.CASCADE)
    question_no = models.PositiveSmallIntegerField()
    mode = models.CharField(max_length=10)  # online, web, offline
    language = models.CharField(max_length=10, blank=True)  # for code answers ("php")
    answer_text = models.TextField()
    proctor_flags = models.JSONField(default=list)
    max_marks = models.PositiveSmallIntegerField(default=10)
    ai_score = models.FloatField(null=True, blank=True)
    ai_feedback = models.TextField(blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
