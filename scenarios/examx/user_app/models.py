from django.db import models


class Account(models.Model):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=20, default="teacher")
    reset_sent_at = models.DateTimeField(null=True, blank=True)
