"""modelfix pytest plugin (fixtures come with issue 4/5)."""
