"""E-mail: letters in the product's words, queued in the database, delivered by the worker."""
