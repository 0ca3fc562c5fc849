"""Issue 28, "What a new user trips on": one test module per item."""
