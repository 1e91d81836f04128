/* session.h: what one statement can leave behind in a server session, decided from its text
 * alone (POOLSHIM_RESET=auto). A conservative scan: CLEAN only when the statement provably
 * changes no session state that the server's session tracking would not report; anything in
 * doubt is FULL. A false FULL costs one full reset; a false CLEAN would show one borrower
 * another's state. Pure functions: no I/O, no client library (unit-tested in test_session). */
#pragma once
#include <glib.h>
#include <string.h>

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

/* The keyword tests of the statement scans (here, watch.c and watch_scan.c) run on every
 * statement a pooled connection sends: byte tests inline, no library call. */
static inline __attribute__((always_inline)) unsigned char
ps_session_lower(unsigned char c)
{
  return c >= 'A' && c <= 'Z' ? (unsigned char)(c | 0x20) : c;
}

/* Bytes of words: PS_BYTE_WORD an ASCII letter, digit, _ or $; PS_BYTE_HIGH >= 0x80 (a word
 * byte for session.c's scan, a separator for watch_scan.c's). One load per byte. */
enum { PS_BYTE_WORD = 1, PS_BYTE_HIGH = 2 };
static const guint8 ps_session_bytes[256] = {
  ['0' ... '9'] = PS_BYTE_WORD, ['A' ... 'Z'] = PS_BYTE_WORD, ['a' ... 'z'] = PS_BYTE_WORD,
  ['_'] = PS_BYTE_WORD,         ['$'] = PS_BYTE_WORD,         [0x80 ... 0xff] = PS_BYTE_HIGH,
};

/* An ASCII letter, digit, _ or $. */
static inline __attribute__((always_inline)) gboolean
ps_session_word_byte(unsigned char c)
{
  return ps_session_bytes[c] & PS_BYTE_WORD;
}

/* Whether the n bytes at w are the keyword `lower` (lower-case ASCII), ignoring case. Inline,
 * so that strlen(lower) is a constant and most words are told apart by their length. */
static inline __attribute__((always_inline)) gboolean
ps_session_word_is(const char *w, size_t n, const char *lower)
{
  if (strlen(lower) != n)
    return FALSE;
#pragma GCC unroll 24
  for (size_t i = 0; i < n; i++) {
    /* A lower-case letter k matches c exactly when c | 0x20 == k (c is k or its capital);
     * the keyword is a constant here, so each byte costs a compare or two. */
    unsigned char k = (unsigned char)lower[i], c = (unsigned char)w[i];
    if (k >= 'a' && k <= 'z' ? (unsigned char)(c | 0x20) != k : c != k)
      return FALSE;
  }
  return TRUE;
}
