"""Messages between processes: the transactional outbox, its relay and delivery counts."""
