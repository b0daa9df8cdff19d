"""Request and response models of the users domain."""
