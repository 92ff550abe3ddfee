"""Unit tests of raystream/_runtime/plan/, one file per module."""
