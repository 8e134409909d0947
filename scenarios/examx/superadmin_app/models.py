from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=200)
    contact_email = models.EmailField()
    schema_name = models.CharField(max_length=40, unique=True)
    invited_at = models.DateTimeField(null=True, blank=True)


class SchemaChange(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE)
    name = models.CharField(max_length=100)
    statements = models.JSONField(default=list)
    applied_at = models.DateTimeField()
