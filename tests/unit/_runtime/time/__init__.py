"""Unit tests of raystream/_runtime/time/, one file per module."""
