"""omnistock: a real-time inventory availability engine backed by Redis."""
