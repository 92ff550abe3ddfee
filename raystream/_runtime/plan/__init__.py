"""The physical plan (physical: chains, edges, subtasks) and the plain data the coordinator
and the subtasks exchange (specs; failure)."""
