from django.apps import AppConfig


class GeventcheckConfig(AppConfig):  # type: ignore[misc]  # django ships no type hints
    name = "geventcheck.contrib.django"
    label = "geventcheck"
    verbose_name = "geventcheck"
