"""Operator command groups of the `kswifi` CLI, one module per group."""
