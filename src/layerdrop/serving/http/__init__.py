"""The HTTP side of ``layerdrop serve``: the FastAPI app, its routes (one router per task), the API's
shapes, errors, metrics and edge middleware."""
