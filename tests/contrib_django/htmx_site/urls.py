from django.urls import include, path

from . import views

urlpatterns = [
    path("htmx<int:version>/<slug:room>/", views.room),
    path("eventsource/<slug:room>/", views.eventsource),
    path("sse/", include("sserelay.contrib.django.urls")),
]
