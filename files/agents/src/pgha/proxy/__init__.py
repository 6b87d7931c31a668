"""pgha-proxy: routes client TCP connections to the elected primary (and read-only ones to healthy
replicas), closing them at once when the target changes and fencing itself when the store is
unreadable."""
