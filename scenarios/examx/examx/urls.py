from django.urls import path

from admin_app.views import bulk_import_tasks_async, question_paper_approval_export
from teacher_app.views import online_ai_evaluation

urlpatterns = [
    path("api/admin/bulk-upload/", bulk_import_tasks_async.start_bulk_upload),
    path("api/admin/bulk-upload/<int:upload_id>/", bulk_import_tasks_async.progress_view),
    path("api/admin/exams/<int:exam_id>/papers/export/",
         question_paper_approval_export.export_papers),
    path("api/teacher/exams/<int:exam_id>/evaluate/", online_ai_evaluation.evaluate_online),
]
