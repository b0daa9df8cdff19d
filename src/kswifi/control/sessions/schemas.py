"""Request and response models of the sessions domain."""
