"""Unit tests of raystream/connectors/files/, one file per module."""
