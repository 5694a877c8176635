"""Alembic revisions: the only way synthpipe's schema is made or changed."""
