"""The scheduler role: background duties run by one leader at a time."""
