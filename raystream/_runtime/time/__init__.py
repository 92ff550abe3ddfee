"""Event time: watermarks and their generators (watermarks), timer queues (timers)."""
