"""Previous works of the poster's table, as ltray training methods (``train.method``)."""
