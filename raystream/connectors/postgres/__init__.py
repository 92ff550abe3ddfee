"""PostgreSQL: PostgresSink (sink), its session (session), tables (tables) and writer (writer)."""
