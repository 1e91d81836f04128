/* session.h: what one statement can leave behind in a server session, decided from its text
 * alone (POOLSHIM_RESET=auto). A conservative scan: CLEAN only when the statement provably
 * changes no session state that the server's session tracking would not report; anything in
 * doubt is FULL. A false FULL costs one full reset; a false CLEAN would show one borrower
 * another's state. Pure functions: no I/O, no client library (unit-tested in test_session). */
#pragma once
#include <glib.h>

typedef enum {
  PS_STMT_CLEAN, /* reads and plain DML: SELECT, INSERT, UPDATE, DELETE, SHOW, ... */
  PS_STMT_TXN,   /* BEGIN, START TRANSACTION, COMMIT, ROLLBACK, SAVEPOINT, RELEASE SAVEPOINT */
  PS_STMT_FULL,  /* anything else: only a full reset is known to undo it */
} PsStmtKind;

PsStmtKind ps_session_classify_sql(const char *sql, size_t len);

/* The statement that turns on the session tracking the auto mode relies on: the server then
 * flags (SERVER_SESSION_STATE_CHANGED) every change of a system variable, the database,
 * prepared statements and temporary tables. A session reset turns it off again. */
#define PS_SESSION_TRACKING_SQL                                                                    \
  "SET session_track_state_change=ON, session_track_schema=ON, "                                  \
  "session_track_system_variables='*'"
