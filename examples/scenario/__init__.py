"""The scenario of docs/tutorial.md: its Headwater config and its AWS helper."""
