"""Built-in handlers, registered exactly as third-party plugins are."""
