"""The operator console: server-rendered pages under ``/ui/`` on the admin API's listener (and,
with ``[admin] console_listen``, on a loopback TCP port for browsers), signed in with the admin
token (operator) or the viewer token (read only)."""
