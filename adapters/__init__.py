"""Built-in architecture adapters, installed as ``mliscan.adapters``.

Always import them as ``mliscan.adapters.<module>``; a bare ``adapters`` package would clash
with an unrelated PyPI distribution of that name.
"""
