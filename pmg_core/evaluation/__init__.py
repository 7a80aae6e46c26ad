"""`pmg eval`: PMG's methods and the baselines against held-out users, the judge, the statistics and the report."""
