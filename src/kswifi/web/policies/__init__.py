"""The shop's policy pages: terms, privacy, refunds (placeholders the operator replaces)."""
