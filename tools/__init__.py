"""What is neither the runtime nor an ads role: the command-line commands, the local Kafka\nbroker, ``adstream status`` and the demo."""
