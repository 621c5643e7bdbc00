"""Prompt sources: the built-in task's splits, txt/jsonl/json/parquet files and HPDv2 folders."""
