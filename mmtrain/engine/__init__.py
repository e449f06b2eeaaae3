"""The training engine: trainer loop, precision, checkpoints, optimizer, schedule, logging."""
