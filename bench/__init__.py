"""Gateway benchmark: what Strata adds on top of a static upstream.

``python -m bench`` (or ``make bench``) starts a static OpenAI-compatible stub in
nginx, starts ``strata serve`` in front of it, and drives both with ``wrk``.
"""
