"""Request and response models of the admin domain."""
