"""Request and response models of the profiles domain."""
