"""Tiny model / datamodule fixtures shared by the tests."""
