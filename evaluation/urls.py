"""Survey routes: listener pages under /s/<slug>/, clips under opaque per-listener tokens /a/<token>."""
from django.urls import path

from evaluation import batch_audio, views

app_name = "evaluation"
urlpatterns = [
    path("s/<slug:slug>/", views.entry, name="entry"),
    path("s/<slug:slug>/consent", views.consent, name="consent"),
    path("s/<slug:slug>/instructions", views.instructions, name="instructions"),
    path("s/<slug:slug>/headphones", views.headphones, name="headphones"),
    path("s/<slug:slug>/headphones/<int:n>", views.headphone_audio, name="headphone_audio"),
    path("s/<slug:slug>/trial", views.trial, name="trial"),
    path("s/<slug:slug>/answer", views.answer, name="answer"),
    path("s/<slug:slug>/done", views.done, name="done"),
    path("s/<slug:slug>/example/<int:value>", views.anchor, name="anchor"),
    path("s/<slug:slug>/sample", views.sample, name="sample"),
    path("a/<str:token>", views.audio, name="audio"),
    batch_audio.urlpattern,
]
