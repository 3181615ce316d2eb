"""Uploaded files (the Files API): validation and encrypted storage."""
