"""Files: FileSource (source), FileSink (sink), its rolling part files (parts) and their names
(names), and compaction with its signed manifests (compaction, compaction_manifests)."""
