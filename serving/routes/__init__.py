"""The HTTP routes, one module per area; :func:`serving.app.create_app` includes them.

:mod:`.deps` holds what the routes depend on (the app's state, the API key check, the
model of the request); :mod:`.scores`, :mod:`.model` and :mod:`.operations` each hold an
``APIRouter``.
"""
