"""Every source and sink beyond the in-memory ones: files (FileSource, FileSink, compaction),
PostgreSQL, Kafka, and the Nexmark generator. Users reach them through raystream.sources
and raystream.sinks."""
