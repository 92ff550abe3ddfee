"""Unit tests of raystream/_runtime/state/, one file per module."""
