"""Unit tests of raystream/_runtime/operators/, one file per module."""
