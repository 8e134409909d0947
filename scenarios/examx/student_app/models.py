from django.db import models


class Student(models.Model):
    roll_no = models.CharField(max_length=20, unique=True)
    name = models.CharField(max_length=100)
    email = models.EmailField()
    batch = models.CharField(max_length=20)


class CodeSubmission(models.Model):
    student = models.ForeignKey(Student, on_delete=models.CASCADE)
    language_id = models.PositiveSmallIntegerField()  # Judge0 language ids (71 = Python 3)
    source = models.TextField()
    stdin = models.TextField(blank=True)
    expected_output = models.TextField(blank=True)
    status = models.CharField(max_length=40, default="queued")
    stdout = models.TextField(blank=True)
    time_ms = models.FloatField(null=True, blank=True)
    token = models.CharField(max_length=64, blank=True)
