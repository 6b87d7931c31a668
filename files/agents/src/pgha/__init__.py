"""pgha: highly available PostgreSQL agents on etcd v3."""

__version__ = "0.1.0"
