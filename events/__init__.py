"""Event schemas (frozen pydantic models) and the bus that carries them."""
