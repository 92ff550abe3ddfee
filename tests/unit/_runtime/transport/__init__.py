"""Unit tests of raystream/_runtime/transport/, one file per module."""
