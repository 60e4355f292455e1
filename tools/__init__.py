"""Developer tools, kept out of the runtime package."""
