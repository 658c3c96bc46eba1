"""Model classes the engine serves, their configs and checkpoint loading."""
