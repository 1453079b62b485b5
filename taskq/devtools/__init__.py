"""Development tools shipped with taskq (not used by the library at run time)."""
