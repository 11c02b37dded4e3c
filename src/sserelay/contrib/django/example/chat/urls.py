"""The chat's URLs: the index, the rooms, and their tokens."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("room/<slug:room>/", views.room, name="room"),
    path("room/<slug:room>/token", views.room_token, name="room-token"),
]
