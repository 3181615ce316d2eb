"""Background work on a Redis job queue (SAQ): batches, scheduled jobs, Ray shards."""
