"""Request and response models of the gateways domain."""
