"""What a job keeps in durable storage: the checkpoint store and its signed records (store,
signing), snapshots (snapshot), manifests (manifest), incremental keyed state (changelog),
the audit's counts (tally)."""
