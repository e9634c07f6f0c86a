"""Quality and latency at a depth, QA scoring, and the tables and plots that report them."""
