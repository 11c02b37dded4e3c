"""The chat's URLs: the index and the rooms."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("room/<slug:room>/", views.room, name="room"),
]
