"""KoboToolbox: the API client, and a local KoboToolbox-compatible server for the demo and tests."""
