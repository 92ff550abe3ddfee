"""Unit tests of raystream/_runtime/control/, one file per module."""
