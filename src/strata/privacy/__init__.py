"""Privacy: GDPR export and erasure of a data subject (``strata.privacy.subject``)
and retention purges (``strata.privacy.retention``).

Nothing is imported here: settings import ``retention`` and must not pull in the
storage and security modules that ``subject`` needs."""
