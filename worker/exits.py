"""The exit codes of a worker process and of the supervisor (``sentistream worker``)."""

EXIT_OK = 0
EXIT_FAILED = 1  # a fatal error (the producer cannot go on), or a child that did not stop cleanly
EXIT_CONFIG = 2  # a configuration the worker cannot start with (a bundle that does not load): no restart
EXIT_CRASH_LOOP = 3  # the supervisor gave up: a worker slot restarted too often
