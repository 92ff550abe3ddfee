"""Unit tests of raystream/_runtime/, one file per module."""
