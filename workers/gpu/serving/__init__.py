"""Model servers on the GPU workers: placing services, keeping servers and their
adapters alive, and answering chats through them."""
