-- Whether the run (ARGV[1]) still holds its claim on the record (KEYS[1]): 1, else 0.
return holds(KEYS[1], ARGV[1]) and 1 or 0
