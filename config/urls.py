"""URL routes: the survey at the root, the researchers' admin under /admin/."""
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("evaluation.urls")),
]
