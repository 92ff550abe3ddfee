"""Unit tests of raystream/_runtime/checkpointing/, one file per module."""
