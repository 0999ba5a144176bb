"""Built-in plugins. Each module imports only the public API (from gauntlet import ...),
so each is also a working example for plugin authors."""
