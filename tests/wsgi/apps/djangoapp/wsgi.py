"""The Django project's WSGI application (``tests.wsgi.apps.djangoapp.wsgi:application``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.wsgi.apps.djangoapp.settings")
application = get_wsgi_application()
