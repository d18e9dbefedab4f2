/* Check macros shared by the C API tests: count passes and failures, print each failure with its
 * location (and, for MUST, the library's error message). The tests print "N passed, N failed". */
#ifndef AGENTLM_FFI_TESTS_CHECK_H
#define AGENTLM_FFI_TESTS_CHECK_H

#include "agentlm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int g_passed, g_failed;

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (cond) {                                                                                    \
      g_passed++;                                                                                  \
    } else {                                                                                       \
      g_failed++;                                                                                  \
      fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                              \
    }                                                                                              \
  } while (0)

#define CHECK_STATUS(expr, want)                                                                   \
  do {                                                                                             \
    agentlm_status got_ = (expr);                                                                  \
    if (got_ == (want)) {                                                                          \
      g_passed++;                                                                                  \
    } else {                                                                                       \
      g_failed++;                                                                                  \
      fprintf(stderr, "FAIL %s:%d: %s = %d (%s), want %d\n", __FILE__, __LINE__, #expr, (int)got_, \
              agentlm_status_string(got_), (int)(want));                                           \
    }                                                                                              \
  } while (0)

/* Runs a call that must succeed, printing the error message otherwise. */
#define MUST(call)                                                                                 \
  do {                                                                                             \
    agentlm_error *err_ = NULL;                                                                    \
    agentlm_status st_ = (call);                                                                   \
    if (st_ < 0) {                                                                                 \
      g_failed++;                                                                                  \
      fprintf(stderr, "FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call,                           \
              agentlm_error_message(err_));                                                        \
    } else {                                                                                       \
      g_passed++;                                                                                  \
    }                                                                                              \
    agentlm_error_free(err_);                                                                      \
  } while (0)

/* An on/off switch from the environment: set, non-empty and not "0". */
static inline int env_flag(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}

/* Seconds on the monotonic clock. */
static inline double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Runs one part of a test and prints the seconds since `t0` (a local the caller sets with now_s()),
 * so a slow run (valgrind, sanitizers) shows where its time goes. */
#define SECTION(call)                                                                              \
  do {                                                                                             \
    call;                                                                                          \
    fprintf(stderr, "%-48s %6.1f s\n", #call, now_s() - t0);                                       \
  } while (0)

#endif
