"""Files: the Parquet format, file and folder names, metadata, atomic writes and compaction."""
