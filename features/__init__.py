"""Events in, point-in-time feature vectors out.

The public entry points are :func:`features.engine.build_features`,
:func:`features.definition.load_definition` and :func:`features.events.load_events`.
This package imports neither ``training`` nor ``serving``.
"""
