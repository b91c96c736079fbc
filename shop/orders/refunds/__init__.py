"""Line refunds: an admin's (or the warehouse's) refund of some units of an order's lines,
with a restock decision per line. See ``service`` for the entry point."""
