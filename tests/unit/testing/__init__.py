"""Unit tests of raystream/testing/, one file per module."""
