"""Unit tests of raystream/_runtime/subtask/, one file per module."""
