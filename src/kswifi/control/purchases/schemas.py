"""Request and response models of the purchases domain."""
