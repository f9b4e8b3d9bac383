"""The HTTP API's routes, one module a resource.

Each module exports ``ROUTES``, a list of ``Route`` rows whose handlers are plain
module-level functions taking the ``Context`` first; ``gateway.app`` binds them to one
context and registers them. A handler authenticates, authorizes, validates, asks the
engine and renders; it holds no domain rule.
"""
