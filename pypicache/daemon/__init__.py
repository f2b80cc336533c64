"""The daemon's assembly: options, configuration, listeners, and the wiring of providers, services and routes."""
