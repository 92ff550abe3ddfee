"""Unit tests of raystream/connectors/, one file per module."""
