"""Serving's data plane: a chat goes from the API (or a batch) straight to the model
server of its service, and what the platform must know of it (usage, and the chat
itself only when asked to store it) is counted beside it and written in batches."""
