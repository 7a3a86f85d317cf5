"""Everything that writes events: the Kafka publisher, simulator, replayer and importers."""
