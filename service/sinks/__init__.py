"""Where verdicts go: MQTT (through the durable outbox) and the review queue."""
