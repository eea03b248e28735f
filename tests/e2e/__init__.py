"""End-to-end tests: the container image and the whole scenario, as a user runs them."""
