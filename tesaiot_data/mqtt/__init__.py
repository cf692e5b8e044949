"""The socket stage: paho-mqtt in one folder, from the connection to the inbox.

`_paho` knows paho 1.6 and 2.x; `connection` builds a configured client and types its
refusals, its connect errors and its reconnect backoff; `client` is the subscriber (its
threads and the inbox between them); `publisher` is the replay's publishing connection.
Nothing here imports pandas or pyarrow at import time; nothing outside this folder imports paho.
"""
