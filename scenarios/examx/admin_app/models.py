from django.db import models


class Exam(models.Model):
    code = models.CharField(max_length=32, unique=True)
    title = models.CharField(max_length=200)
    subject = models.CharField(max_length=50)
    status = models.CharField(max_length=20, default="scheduled")  # scheduled, live, closed
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    auto_submitted_at = models.DateTimeField(null=True, blank=True)


class Topic(models.Model):
    subject = models.CharField(max_length=50)
    name = models.CharField(max_length=100)
    keywords = models.TextField()  # comma-separated


class Question(models.Model):
    subject = models.CharField(max_length=50, db_index=True)
    topic = models.ForeignKey(Topic, null=True, blank=True, on_delete=models.SET_NULL)
    text = models.TextField()
    options = models.JSONField(default=list)
    answer = models.CharField(max_length=200, blank=True)
    marks = models.PositiveSmallIntegerField(default=1)
    difficulty = models.CharField(max_length=10, default="medium")
    source = models.CharField(max_length=20, default="manual")  # manual, upload, ai, extract
    upload_id = models.IntegerField(null=True, blank=True, db_index=True)
    generation_job_id = models.IntegerField(null=True, blank=True, db_index=True)
    content_hash = models.CharField(max_length=64, blank=True, db_index=True)
    search_index = models.TextField(blank=True)
    indexed_at = models.DateTimeField(null=True, blank=True)


class QuestionPaper(models.Model):
    exam = models.ForeignKey(Exam, on_delete=models.CASCADE, related_name="papers")
    code = models.CharField(max_length=32)
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=20, default="draft")  # draft, approved, exported
    template_code = models.CharField(max_length=32, blank=True)
    archive_url = models.CharField(max_length=300, blank=True)
    questions = models.ManyToManyField(Question, through="PaperQuestion")


class PaperQuestion(models.Model):
    paper = models.ForeignKey(QuestionPaper, on_delete=models.CASCADE)
    question = models.ForeignKey(Question, on_delete=models.CASCADE)
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["position"]


class ExamAttempt(models.Model):
    exam = models.ForeignKey(Exam, on_delete=models.CASCADE, related_name="attempts")
    student = models.ForeignKey("student_app.Student", on_delete=models.CASCADE)
    status = models.CharField(max_length=20, default="in_progress")
    seat = models.CharField(max_length=16, blank=True)
    started_at = models.DateTimeField()
    submitted_at = models.DateTimeField(null=True, blank=True)
    score = models.FloatField(null=True, blank=True)
    responses = models.CharField(max_length=200, blank=True)  # "1" right, "0" wrong, "-" blank


class OrderCopy(models.Model):
    exam = models.ForeignKey(Exam, on_delete=models.CASCADE)
    number = models.CharField(max_length=40)
    version = models.PositiveIntegerField(default=0)
    pdf_path = models.CharField(max_length=300, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    pages = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(null=True, blank=True)


class Rubric(models.Model):
    question = models.ForeignKey(Question, on_delete=models.CASCADE)
    status = models.CharField(max_length=20, default="pending")
    content = models.JSONField(default=dict)
    generated_at = models.DateTimeField(null=True, blank=True)
