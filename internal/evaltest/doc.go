// Package evaltest holds evalpool's test helpers, in one place: a real Redis,
// log capture, and waiting on conditions.
//
// The pool's guarantees live in Lua scripts run by Redis, so a mock would test
// nothing of them. Tests share one redis-server per package (Client), started
// on a free loopback port, or the server named by EVALPOOL_TEST_REDIS_URL, and
// isolate themselves by pool name (Pool); tests that kill or restart Redis
// start their own (Start). When no redis-server can be found the helpers fail
// and say how to install one: a skipped test proves nothing.
package evaltest
