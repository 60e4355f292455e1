"""The one Redis seam: keys, scripts and their Lua, typed replies, pub/sub, the embedded
store, the health probe. Only this package imports redis."""
