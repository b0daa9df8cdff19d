"""Telling people about their sessions outside the page: the alerts noted by the sessions
domain, sent by the worker over the channels each person keeps on."""
