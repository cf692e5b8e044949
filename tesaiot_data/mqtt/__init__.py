"""The socket stage: paho-mqtt (1.6 or 2.x) in one place, the subscriber and its inbox.

Nothing here imports pandas or pyarrow at import time.
"""
