"""Request and response models of the usage domain."""
