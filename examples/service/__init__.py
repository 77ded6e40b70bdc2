"""The reference service: a FastAPI app built only on dbfoundation's public API (see README)."""
