"""Test tooling, not the core API: crash points and S3 faults (faults, injector)."""
