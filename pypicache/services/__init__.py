"""The services: what the server does (pages, downloads, accounts, checks), independent of HTTP."""
