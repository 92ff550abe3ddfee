"""The raystream version, in a module of its own so that the runtime can record it in
manifests without importing the package root."""
__version__ = "0.8.2"
