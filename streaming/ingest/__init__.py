"""Getting reviews into `udemy-reviews`: the backfill from the review source and `POST /reviews`."""
