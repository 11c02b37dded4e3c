from django.urls import include, path

from . import views

urlpatterns = [
    path("htmx<int:version>/<slug:room>/", views.room),
    path("sse/", include("sserelay.contrib.django.urls")),
]
