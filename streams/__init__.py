"""The Kafka edges: topics, the local broker, the projector, the command handler and replay."""
