"""NSFF workflow core library."""
