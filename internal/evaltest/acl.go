package evaltest

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// StartACL starts a redis-server set up as production ones with ACLs are:
// user, with password, may run every command on every key and channel, and
// the default user is off, so that a connection that does not log in as
// user can do nothing. Its address is in Addr; its URL is
// "redis://user:password@" + Addr + "/0".
func StartACL(t testing.TB, user, password string) *Server {
	t.Helper()
	s := StartT(t, Options{})
	c := redis.NewClient(&redis.Options{Addr: s.Addr, DialTimeout: time.Second})
	defer c.Close()
	for _, rule := range [][]any{
		{"ACL", "SETUSER", user, "reset", "on", ">" + password, "~*", "&*", "+@all"},
		{"ACL", "SETUSER", "default", "off"},
	} {
		if err := c.Do(t.Context(), rule...).Err(); err != nil {
			t.Fatalf("evaltest: %v: %v", rule[:3], err)
		}
	}
	return s
}
