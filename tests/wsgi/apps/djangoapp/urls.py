"""URLs of the tiny Django project: an order by id and a view that holds its thread."""

import time

from django.http import HttpRequest, JsonResponse
from django.urls import path

from fournines import current_deadline


def order(request: HttpRequest, order_id: int) -> JsonResponse:
    deadline = current_deadline()
    return JsonResponse({"order": order_id,
                         "remaining": None if deadline is None else deadline.remaining()})


def work(request: HttpRequest) -> JsonResponse:
    time.sleep(float(request.GET.get("ms", "20")) / 1000)
    return JsonResponse({"ok": True})


urlpatterns = [
    path("orders/<int:order_id>", order),
    path("work", work),
]
