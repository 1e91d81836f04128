# Django settings for a project whose MariaDB/MySQL connections are pooled by poolshim
# (the process runs under poolshim-run, or with LD_PRELOAD=libpoolshim.so).
#
# Why CONN_MAX_AGE = 0: Django then closes its connection at the end of every request
# (and opens one at the next query). Under poolshim that close gives the connection back
# to the process's pool, which resets the session and keeps it; the next request's
# connect borrows it again without a TCP handshake, a login or a TLS key exchange. The
# pool, not Django, decides how many connections exist and how long they live
# (POOLSHIM_POOL_SIZE, POOLSHIM_MAX_LIFETIME, POOLSHIM_IDLE_TIMEOUT).
#
# With CONN_MAX_AGE > 0 (or None) Django keeps one connection per thread between
# requests: the pool sees one connect per thread and has nothing to share. Worse, with
# more threads than the pool's size (gthread workers, a thread pool), the threads beyond
# it wait for connections that other threads keep and fail with error 1040 after
# POOLSHIM_TIMEOUT.
#
# Django's own connection pool option (Django 5.1 and later) exists for PostgreSQL only.
import os

DATABASES = {
    "default": {
        # django.db.backends.mysql uses mysqlclient (MySQLdb), which calls the C client
        # library: poolshim sees its connects. PyMySQL, also when installed with
        # pymysql.install_as_MySQLdb(), speaks the protocol in Python and is not pooled.
        "ENGINE": "django.db.backends.mysql",
        "NAME": "mysite",
        "USER": "mysite",
        "PASSWORD": os.environ.get("MYSITE_DB_PASSWORD", ""),
        "HOST": "db1.example.com",
        "PORT": "3306",
        # Return the connection to the pool after every request (see above).
        "CONN_MAX_AGE": 0,
        "OPTIONS": {
            # Part of the pool's key like every connect option: processes that connect
            # with other options get a pool of their own.
            "charset": "utf8mb4",
            # Sent again after every reset, as after a new connect.
            "init_command": "SET sql_mode='STRICT_TRANS_TABLES'",
        },
    },
}
