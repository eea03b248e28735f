"""Runnable examples of Headwater's data flow (scripts, not a library; see README.md)."""
