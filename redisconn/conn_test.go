package redisconn_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/redisconn"
)

// open parses cfg and returns a client, closed when the test ends.
func open(t *testing.T, cfg redisconn.Config) (*redisconn.Conn, redis.UniversalClient) {
	t.Helper()
	conn, err := redisconn.Parse(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client := conn.NewClient()
	t.Cleanup(func() { _ = client.Close() })
	return conn, client
}

// inspect lists the queues through Asynq's own connection option, as
// Asynqmon does.
func inspect(t *testing.T, conn *redisconn.Conn) ([]string, error) {
	t.Helper()
	insp := asynq.NewInspector(conn.AsynqConnOpt())
	defer insp.Close()
	return insp.Queues()
}

// enqueue puts one task in queue q through the shared client, as the CLI
// does.
func enqueue(t *testing.T, client redis.UniversalClient, q string) {
	t.Helper()
	aq := asynq.NewClientFromRedisClient(client)
	if _, err := aq.EnqueueContext(t.Context(), asynq.NewTask("probe", nil), asynq.Queue(q)); err != nil {
		t.Fatal(err)
	}
}

// Nothing listens: the error wraps ErrConnect and names the URL, without
// its password, from the client's own commands and from Ping.
func TestUnreachableNamesTheURLRedacted(t *testing.T) {
	t.Parallel()
	addr := evaltest.FreeAddr(t)
	for _, url := range []string{
		"redis://alice:secret@" + addr + "/0",
		"redis-sentinel://alice:secret@" + addr + "/0?master=m&sentinel_password=secret",
	} {
		t.Run(strings.Split(url, ":")[0], func(t *testing.T) {
			t.Parallel()
			conn, client := open(t, redisconn.Config{URL: url, DialTimeout: time.Second})
			want := redisconn.Redact(url)
			if conn.Kind() == redisconn.Standalone { // go-redis takes 5 s to give up on Sentinels: once is enough
				err := client.Set(t.Context(), "k", "v", 0).Err()
				if !errors.Is(err, redisconn.ErrConnect) || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "secret") {
					t.Errorf("SET: %v; want ErrConnect naming %s", err, want)
				}
			}
			err := conn.Ping(t.Context(), client)
			if !errors.Is(err, redisconn.ErrConnect) || strings.Count(err.Error(), want) != 1 || strings.Contains(err.Error(), "secret") {
				t.Errorf("Ping: %v; want ErrConnect naming %s once", err, want)
			}
		})
	}
}

// A Redis whose default user is off: the client and Asynq's option both log
// in as the URL's user. Asynq's own ParseRedisURI drops the user, which is
// why this package exists.
func TestACLUser(t *testing.T) {
	t.Parallel()
	s := evaltest.StartACL(t, "evalpool", "s3cret")
	url := "redis://evalpool:s3cret@" + s.Addr + "/0"
	conn, client := open(t, redisconn.Config{URL: url})
	if err := conn.Ping(t.Context(), client); err != nil {
		t.Fatal(err)
	}
	enqueue(t, client, "acl")
	if qs, err := inspect(t, conn); err != nil || len(qs) != 1 || qs[0] != "acl" {
		t.Fatalf("queues through Asynq's option: %v, %v", qs, err)
	}

	opt, err := asynq.ParseRedisURI(url)
	if err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspector(opt)
	defer insp.Close()
	if _, err := insp.Queues(); err == nil {
		t.Log("asynq.ParseRedisURI keeps the ACL user now; the workaround in AsynqConnOpt could go")
	}

	conn, client = open(t, redisconn.Config{URL: "redis://evalpool:wrong@" + s.Addr + "/0"})
	if err := conn.Ping(t.Context(), client); !errors.Is(err, redisconn.ErrConnect) || !strings.Contains(err.Error(), "WRONGPASS") || strings.Contains(err.Error(), "wrong@") {
		t.Fatalf("wrong password: %v", err)
	}
}

// Mutual TLS with a CA file: works with the CA and client certificate,
// fails clearly without either.
func TestTLS(t *testing.T) {
	t.Parallel()
	certs := evaltest.NewCerts(t)
	s := evaltest.StartTLS(t, certs, evaltest.Options{})
	url := "rediss://" + s.Addr + "/0"
	all := redisconn.TLSFiles{CA: certs.CAFile, Cert: certs.ClientCert, Key: certs.ClientKey}

	conn, client := open(t, redisconn.Config{URL: url, TLS: all})
	if err := conn.Ping(t.Context(), client); err != nil {
		t.Fatal(err)
	}
	enqueue(t, client, "tls")
	if qs, err := inspect(t, conn); err != nil || len(qs) != 1 {
		t.Fatalf("queues through Asynq's option: %v, %v", qs, err)
	}

	for _, tt := range []struct {
		name  string
		files redisconn.TLSFiles
		want  string
	}{
		{"no CA", redisconn.TLSFiles{Cert: certs.ClientCert, Key: certs.ClientKey}, "certificate signed by unknown authority"},
		{"no client certificate", redisconn.TLSFiles{CA: certs.CAFile}, "certificate"},
	} {
		conn, client := open(t, redisconn.Config{URL: url, TLS: tt.files})
		err := conn.Ping(t.Context(), client)
		if !errors.Is(err, redisconn.ErrConnect) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), url) {
			t.Errorf("%s: %v; want ErrConnect naming %s, holding %q", tt.name, err, url, tt.want)
		}
	}
	conn, client = open(t, redisconn.Config{URL: "redis://" + s.Addr + "/0"})
	if err := conn.Ping(t.Context(), client); !errors.Is(err, redisconn.ErrConnect) {
		t.Errorf("plain text to a TLS port: %v", err)
	}
}

// A Sentinel URL: the client and Asynq's option find the master, and the
// client follows it through a failover.
func TestSentinel(t *testing.T) {
	t.Parallel()
	sen := evaltest.StartSentinel(t, evaltest.SentinelOptions{})
	conn, client := open(t, redisconn.Config{URL: sen.URL()})
	if conn.Kind() != redisconn.Sentinel {
		t.Fatalf("kind %s", conn.Kind())
	}
	if err := client.Set(t.Context(), "before", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	enqueue(t, client, "sentinel")
	if qs, err := inspect(t, conn); err != nil || len(qs) != 1 {
		t.Fatalf("queues through Asynq's option: %v, %v", qs, err)
	}

	start := time.Now()
	master := sen.Failover(t)
	probe := redis.NewClient(&redis.Options{Addr: master})
	defer probe.Close()
	evaltest.Eventually(t, 20*time.Second, "the client never wrote to the new master "+master, func() bool {
		if err := client.Incr(t.Context(), "after").Err(); err != nil {
			return false
		}
		n, err := probe.Get(t.Context(), "after").Int()
		return err == nil && n > 0
	})
	t.Logf("writes reach the new master %s %s after SENTINEL FAILOVER", master, time.Since(start).Round(time.Millisecond))
	if n, err := probe.Exists(t.Context(), "before").Result(); err != nil || n != 1 {
		t.Fatalf("the new master lacks the write made before the failover: %d, %v", n, err)
	}
}
