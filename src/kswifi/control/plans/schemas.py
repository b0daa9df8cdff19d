"""Request and response models of the plans domain."""
