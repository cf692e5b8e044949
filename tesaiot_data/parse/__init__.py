"""The parse stage: topic and payload bytes to columns of rows, or a counted reject.

Pure functions and small records; nothing here imports pandas or pyarrow at import time.
"""
