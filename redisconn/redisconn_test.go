package redisconn_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/redisconn"
)

func TestMain(m *testing.M) { evaltest.Main(m) }

// want is what a parsed URL must give, through both the client options and
// Asynq's.
func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url      string
		kind     redisconn.Kind
		redacted string
		asynq    asynq.RedisConnOpt
	}{
		{
			"redis://127.0.0.1:6390/2", redisconn.Standalone, "redis://127.0.0.1:6390/2",
			asynq.RedisClientOpt{Network: "tcp", Addr: "127.0.0.1:6390", DB: 2, DialTimeout: 2 * time.Second},
		},
		{
			"redis://alice:s3cret@redis.internal:6379/0", redisconn.Standalone, "redis://alice:xxxxx@redis.internal:6379/0",
			asynq.RedisClientOpt{Network: "tcp", Addr: "redis.internal:6379", Username: "alice", Password: "s3cret", DialTimeout: 2 * time.Second},
		},
		{
			"redis://:s3cret@h?dial_timeout=7s&pool_size=3", redisconn.Standalone, "redis://:xxxxx@h?dial_timeout=7s&pool_size=3",
			asynq.RedisClientOpt{Network: "tcp", Addr: "h:6379", Password: "s3cret", DialTimeout: 7 * time.Second, PoolSize: 3},
		},
		{
			"unix://alice:s3cret@/run/redis.sock?db=4", redisconn.Standalone, "unix://alice:xxxxx@/run/redis.sock?db=4",
			asynq.RedisClientOpt{Network: "unix", Addr: "/run/redis.sock", Username: "alice", Password: "s3cret", DB: 4, DialTimeout: 2 * time.Second},
		},
		{
			"redis://alice:s3cret@n1:7000?addr=n2:7000&addr=n3:7000", redisconn.Cluster, "redis://alice:xxxxx@n1:7000?addr=n2:7000&addr=n3:7000",
			asynq.RedisClusterClientOpt{Addrs: []string{"n1:7000", "n2:7000", "n3:7000"}, Username: "alice", Password: "s3cret", DialTimeout: 2 * time.Second},
		},
		{
			"redis-sentinel://alice:s3cret@s1:26379,s2,s3:26381/3?master=mymaster&sentinel_username=sen&sentinel_password=sp",
			redisconn.Sentinel,
			"redis-sentinel://alice:xxxxx@s1:26379,s2,s3:26381/3?master=mymaster&sentinel_username=sen&sentinel_password=xxxxx",
			asynq.RedisFailoverClientOpt{
				MasterName: "mymaster", SentinelAddrs: []string{"s1:26379", "s2:26379", "s3:26381"},
				SentinelUsername: "sen", SentinelPassword: "sp", Username: "alice", Password: "s3cret", DB: 3, DialTimeout: 2 * time.Second,
			},
		},
		{
			"redis-sentinel://[::1]:26380,[::1],10.0.0.1?master=m", redisconn.Sentinel, "redis-sentinel://[::1]:26380,[::1],10.0.0.1?master=m",
			asynq.RedisFailoverClientOpt{MasterName: "m", SentinelAddrs: []string{"[::1]:26380", "[::1]:26379", "10.0.0.1:26379"}, DialTimeout: 2 * time.Second},
		},
		{
			"redis-sentinel://:pw@s1?master=m&sentinel_password=sp&dial_timeout=7s&pool_size=3", redisconn.Sentinel,
			"redis-sentinel://:xxxxx@s1?master=m&sentinel_password=xxxxx&dial_timeout=7s&pool_size=3",
			asynq.RedisFailoverClientOpt{MasterName: "m", SentinelAddrs: []string{"s1:26379"}, SentinelPassword: "sp", Password: "pw", DialTimeout: 7 * time.Second, PoolSize: 3},
		},
		{
			"REDIS-SENTINEL://s1/?master=m", redisconn.Sentinel, "REDIS-SENTINEL://s1/?master=m",
			asynq.RedisFailoverClientOpt{MasterName: "m", SentinelAddrs: []string{"s1:26379"}, DialTimeout: 2 * time.Second},
		},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			t.Parallel()
			c, err := redisconn.Parse(redisconn.Config{URL: tt.url, DialTimeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if c.Kind() != tt.kind || c.String() != tt.redacted {
				t.Fatalf("kind %s, String %q; want %s, %q", c.Kind(), c, tt.kind, tt.redacted)
			}
			if got := c.AsynqConnOpt(); !reflect.DeepEqual(got, tt.asynq) {
				t.Fatalf("Asynq option\n got %#v\nwant %#v", got, tt.asynq)
			}
			client := c.NewClient()
			defer client.Close()
			if got := reflect.TypeOf(client).String(); got != map[redisconn.Kind]string{
				redisconn.Standalone: "*redis.Client", redisconn.Sentinel: "*redis.Client", redisconn.Cluster: "*redis.ClusterClient",
			}[tt.kind] {
				t.Fatalf("client is a %s", got)
			}
		})
	}
}

func TestParseTLS(t *testing.T) {
	t.Parallel()
	certs := evaltest.NewCerts(t)
	all := redisconn.TLSFiles{CA: certs.CAFile, Cert: certs.ClientCert, Key: certs.ClientKey}
	for _, url := range []string{"rediss://alice:pw@127.0.0.1:6390/0", "rediss://127.0.0.1:7000?addr=127.0.0.1:7001", "rediss-sentinel://127.0.0.1:26379?master=m"} {
		c, err := redisconn.Parse(redisconn.Config{URL: url, TLS: all})
		if err != nil {
			t.Fatal(err)
		}
		var cfgs []any
		switch o := c.AsynqConnOpt().(type) {
		case asynq.RedisClientOpt:
			cfgs = append(cfgs, o.TLSConfig)
		case asynq.RedisClusterClientOpt:
			cfgs = append(cfgs, o.TLSConfig)
		case asynq.RedisFailoverClientOpt:
			cfgs = append(cfgs, o.TLSConfig)
		}
		for _, cfg := range cfgs {
			v := reflect.ValueOf(cfg)
			if v.IsNil() || v.Elem().FieldByName("RootCAs").IsNil() || v.Elem().FieldByName("Certificates").Len() != 1 {
				t.Fatalf("%s: Asynq's TLS config lacks the CA or the client certificate: %+v", url, cfg)
			}
		}
	}
	// rediss:// alone: TLS on the system roots.
	c, err := redisconn.Parse(redisconn.Config{URL: "rediss://h:6390"})
	if err != nil {
		t.Fatal(err)
	}
	if o := c.AsynqConnOpt().(asynq.RedisClientOpt); o.TLSConfig == nil || o.TLSConfig.RootCAs != nil || o.TLSConfig.ServerName != "h" {
		t.Fatalf("rediss:// without files: %+v", o.TLSConfig)
	}

	notPEM := filepath.Join(t.TempDir(), "ca.txt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name  string
		url   string
		files redisconn.TLSFiles
		want  string
	}{
		{"CA on plain text", "redis://alice:secret@h:1/0", redisconn.TLSFiles{CA: certs.CAFile}, "redis://alice:xxxxx@h:1/0 is not a TLS URL"},
		{"CA on plain-text sentinel", "redis-sentinel://h?master=m", redisconn.TLSFiles{CA: certs.CAFile}, "is not a TLS URL"},
		{"missing CA", "rediss://h:1", redisconn.TLSFiles{CA: "/nonexistent/ca.pem"}, "no such file"},
		{"CA not PEM", "rediss://h:1", redisconn.TLSFiles{CA: notPEM}, "holds no PEM certificate"},
		{"cert without key", "rediss://h:1", redisconn.TLSFiles{Cert: certs.ClientCert}, "needs both"},
		{"key without cert", "rediss://h:1", redisconn.TLSFiles{Key: certs.ClientKey}, "needs both"},
		{"swapped cert and key", "rediss://h:1", redisconn.TLSFiles{Cert: certs.ClientKey, Key: certs.ClientCert}, "client certificate"},
	}
	for _, tt := range bad {
		_, err := redisconn.Parse(redisconn.Config{URL: tt.url, TLS: tt.files})
		if !errors.Is(err, redisconn.ErrBadTLS) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: %v; want ErrBadTLS holding %q", tt.name, err, tt.want)
		}
	}
}

func TestParseBadURL(t *testing.T) {
	t.Parallel()
	tests := []struct{ url, want string }{
		{"", "empty"},
		{"   ", "empty"},
		{"127.0.0.1:6390", `no scheme; did you mean "redis://127.0.0.1:6390"?`},
		{"alice:secret@127.0.0.1:6390/0", `did you mean "redis://alice:xxxxx@127.0.0.1:6390/0"?`},
		{"localhost", `did you mean "redis://localhost"?`},
		{"http://nope", `invalid URL scheme "http"`},
		{"redis://alice:secret@h:port/0", `"redis://alice:xxxxx@h:port/0": invalid port ":port" after host`},
		{"redis://alice:secret@h:1/zero", "invalid database number"},
		{"redis://alice:secret@h:1/0?bogus=1", "unexpected option: bogus"},
		{"redis://alice:secret@h:1/0?dial_timeout=soon", "invalid dial_timeout duration"},
		{"redis://alice:secret@h:1?addr=n2", "unable to parse addr param"},
		{"redis://h:1?addr=bob:secret@n2:port", "unable to parse addr param: bob:xxxxx@n2:port"},
		{"unix://alice:secret@", "empty unix socket path"},
		{"redis-sentinel://alice:secret@s1:26379/0", "no master name; add ?master=NAME"},
		{"redis-sentinel://alice:secret@s1,s2/0?master=", "no master name"},
		{"redis-sentinel://alice:secret@/0?master=m", "no Sentinel address"},
		{"redis-sentinel://alice:secret@s1,,s2?master=m", "empty Sentinel address"},
		{"redis-sentinel://alice:secret@s1:99999?master=m", `invalid port "99999"`},
		{"redis-sentinel://alice:secret@s1:x?master=m", `invalid port "x"`},
		{"redis-sentinel://alice:secret@[::1?master=m", "invalid Sentinel address"},
		{"redis-sentinel://alice:secret@s1/db?master=m", `invalid database number "db"`},
		{"redis-sentinel://alice:secret@s1/0/1?master=m", "invalid database number"},
		{"redis-sentinel://alice:secret@s1?master=m&master_name=x", `unknown option "master_name"`},
		{"redis-sentinel://s1?master=m&sentinel_password=secret&bogus=1", "unexpected option: bogus"},
		{"redis-sentinel://s1?master=m&addr=s2", `unknown option "addr"`},
		{"redis-sentinel://alice:sec%zzret@s1?master=m", "invalid URL escape"},
		{"redis-sentinel://s1?master=m&master=n", `option "master" given 2 times`},
		{"redis-sentinel://s1?master=m&sentinel_password=a&sentinel_password=b", `option "sentinel_password" given 2 times`},
		{"redis-sentinel://s1?master=m&route_randomly=true", `option "route_randomly" would send commands to replicas`},
		{"redis-sentinel://s1?master=m&replica_only=true", "would send commands to replicas"},
	}
	for _, tt := range tests {
		_, err := redisconn.Parse(redisconn.Config{URL: tt.url})
		if !errors.Is(err, redisconn.ErrBadURL) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v; want ErrBadURL holding %q", tt.url, err, tt.want)
			continue
		}
		if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "\n") {
			t.Errorf("Parse(%q): the error shows the password or is not one line: %v", tt.url, err)
		}
	}
}

// A password holding an unescaped #, ? or / spills into what the parsers
// take for a host, a port, a path or a fragment, and one in an option may
// hide behind an escaped = or a ; : no part of it shows, in Parse's error
// or in Redact.
func TestNoPartOfAPasswordShows(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		"redis-sentinel://u:S3C#R3T@127.0.0.1:6440/0?master=mm",
		"redis-sentinel://u:S3C?R3T@127.0.0.1:6440/0?master=mm",
		"redis-sentinel://u:S3C/R3T@127.0.0.1:6440/0?master=mm",
		"redis://u:S3C#R3T@127.0.0.1:6440/0",
		"redis://u:S3C?R3T@127.0.0.1:6440/0",
		"redis-sentinel://h?master=mm&sentinel_password=S3C#R3T&bogus=1",
		"redis-sentinel://h?master=mm;sentinel_password=S3CR3T",
		"redis-sentinel://h?master=mm&sentinel_password%3DS3CR3T",
		"redis://h?sentinel_password%3DS3CR3T",
		"redis://h?password%3D=S3CR3T",
	} {
		if got := redisconn.Redact(raw); strings.Contains(got, "S3C") || strings.Contains(got, "R3T") {
			t.Errorf("Redact(%q) = %q: part of the password shows", raw, got)
		}
		if _, err := redisconn.Parse(redisconn.Config{URL: raw}); err != nil && (strings.Contains(err.Error(), "S3C") || strings.Contains(err.Error(), "R3T")) {
			t.Errorf("Parse(%q): part of the password shows: %v", raw, err)
		}
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"redis://alice:pw@h:1/0", "redis://alice:xxxxx@h:1/0"},
		{"redis://:pw@h", "redis://:xxxxx@h"},
		{"redis://alice@h:1/0", "redis://alice@h:1/0"},
		{"redis://h:1/0", "redis://h:1/0"},
		{"redis://alice:p/w@x@h:1/0", "redis://alice:xxxxx@h:1/0"},
		{"redis://alice:p:w@h:1/0?addr=h:2", "redis://alice:xxxxx@h:1/0?addr=h:2"},
		{"redis-sentinel://alice:pw@a,b/0?master=m&sentinel_password=sp", "redis-sentinel://alice:xxxxx@a,b/0?master=m&sentinel_password=xxxxx"},
		{"redis://h?password=pw&PASSWORD=pw&x=1", "redis://h?password=xxxxx&PASSWORD=xxxxx&x=1"},
		{"redis://h?sentinel%5Fpassword=pw", "redis://h?sentinel_password=xxxxx"},
		{"alice:pw@h:1", "alice:xxxxx@h:1"},
		{"rediss://alice:pw@h:1/0#pw", "rediss://alice:xxxxx@h:1/0#xxxxx"},
		{"redis://alice:pw@h?x=@", "redis://alice:xxxxx@h?x=@"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := redisconn.Redact(tt.in); got != tt.want {
			t.Errorf("Redact(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestURLDialTimeoutWins(t *testing.T) {
	t.Parallel()
	c, err := redisconn.Parse(redisconn.Config{URL: "redis://h:1?dial_timeout=9s", DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if o := c.AsynqConnOpt().(asynq.RedisClientOpt); o.DialTimeout != 9*time.Second {
		t.Fatalf("dial timeout %s, want the URL's 9s", o.DialTimeout)
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()
	for k, want := range map[redisconn.Kind]string{redisconn.Standalone: "standalone", redisconn.Cluster: "cluster", redisconn.Sentinel: "sentinel", 7: "Kind(7)"} {
		if k.String() != want {
			t.Errorf("%d: %q, want %q", int(k), k.String(), want)
		}
	}
}
