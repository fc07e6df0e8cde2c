//go:build !unix

package dashboard

// defaultMaxConns is DefaultMaxConns: this system has no descriptor limit
// to keep under.
func defaultMaxConns() int { return DefaultMaxConns }
