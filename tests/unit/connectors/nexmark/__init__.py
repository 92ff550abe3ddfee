"""Unit tests of raystream/connectors/nexmark/, one file per module."""
