package evaltest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelOptions configure StartSentinel.
type SentinelOptions struct {
	// Master names the master the Sentinels watch. Defaults to "evalpool".
	Master string
	// Replicas is how many replicas the master has. Defaults to 1.
	Replicas int
	// Sentinels is how many Sentinels watch it; their quorum is a majority.
	// Defaults to 3.
	Sentinels int
	// Args are extra redis-server arguments of the master and the replicas,
	// e.g. "--min-replicas-to-write", "1".
	Args []string
}

// Sentinel is a master, its replicas and the Sentinels watching them, all
// on free loopback ports, torn down when the test ends.
type Sentinel struct {
	// Master is the master's name.
	Master string
	// Nodes are the data nodes: Nodes[0] is the first master, the others
	// its replicas. A failover swaps their roles.
	Nodes []*Server
	// Sentinels are the Sentinel processes.
	Sentinels []*Server

	t         testing.TB
	sentinels []*redis.SentinelClient
	mu        sync.Mutex
	nodes     map[string]*redis.Client
}

// StartSentinel starts a master, its replicas and Sentinels, and waits
// until every replica is in sync and every Sentinel knows every replica and
// every other Sentinel, so that a failover can start at once.
func StartSentinel(t testing.TB, opts SentinelOptions) *Sentinel {
	t.Helper()
	if opts.Master == "" {
		opts.Master = "evalpool"
	}
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	if opts.Sentinels == 0 {
		opts.Sentinels = 3
	}
	s := &Sentinel{Master: opts.Master, t: t, nodes: map[string]*redis.Client{}}
	master := StartT(t, Options{Args: opts.Args})
	s.Nodes = append(s.Nodes, master)
	host, port, _ := net.SplitHostPort(master.Addr)
	for range opts.Replicas {
		args := append([]string{"--replicaof", host, port}, opts.Args...)
		s.Nodes = append(s.Nodes, StartT(t, Options{Args: args}))
	}
	// A short down-after would fail over on its own when a loaded machine
	// (the race detector on 2 cores) is slow to answer; tests fail over by
	// hand.
	conf := fmt.Sprintf("sentinel monitor %[1]s %[2]s %[3]s %[4]d\n"+
		"sentinel down-after-milliseconds %[1]s 5000\n"+
		"sentinel failover-timeout %[1]s 10000\n"+
		"sentinel parallel-syncs %[1]s 1\n", opts.Master, host, port, opts.Sentinels/2+1)
	for range opts.Sentinels {
		sn := StartT(t, Options{Config: conf, Args: []string{"--sentinel"}})
		c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr, MaxRetries: -1, DialTimeout: time.Second})
		t.Cleanup(func() { _ = c.Close() })
		s.Sentinels, s.sentinels = append(s.Sentinels, sn), append(s.sentinels, c)
	}
	for _, r := range s.Nodes[1:] {
		c := s.node(r.Addr)
		Eventually(t, 30*time.Second, "replica "+r.Addr+" never synced with its master", func() bool {
			info, err := c.Info(t.Context(), "replication").Result()
			return err == nil && strings.Contains(info, "master_link_status:up")
		})
	}
	for i, sn := range s.Sentinels {
		c := s.sentinels[i]
		Eventually(t, 30*time.Second, "sentinel "+sn.Addr+" never saw every replica and Sentinel", func() bool {
			replicas, err := c.Replicas(t.Context(), opts.Master).Result()
			if err != nil || len(replicas) != opts.Replicas {
				return false
			}
			for _, r := range replicas {
				if r["flags"] != "slave" || r["master-link-status"] != "ok" {
					return false
				}
			}
			others, err := c.Sentinels(t.Context(), opts.Master).Result()
			return err == nil && len(others) == opts.Sentinels-1
		})
	}
	return s
}

// Addrs are the Sentinels' addresses.
func (s *Sentinel) Addrs() []string {
	addrs := make([]string, len(s.Sentinels))
	for i, sn := range s.Sentinels {
		addrs[i] = sn.Addr
	}
	return addrs
}

// URL is the redis-sentinel:// URL of the master, database 0.
func (s *Sentinel) URL() string {
	return "redis-sentinel://" + strings.Join(s.Addrs(), ",") + "/0?master=" + s.Master
}

// MasterAddr is the master's address as every Sentinel gives it; it fails
// the test when they disagree.
func (s *Sentinel) MasterAddr(t testing.TB) string {
	t.Helper()
	addrs := s.masterAddrs(t)
	for _, a := range addrs[1:] {
		if a != addrs[0] {
			t.Fatalf("evaltest: the Sentinels disagree on the master: %v", addrs)
		}
	}
	return addrs[0]
}

func (s *Sentinel) masterAddrs(t testing.TB) []string {
	t.Helper()
	addrs := make([]string, len(s.Sentinels))
	for i, sn := range s.Sentinels {
		hp, err := s.sentinels[i].GetMasterAddrByName(t.Context(), s.Master).Result()
		if err != nil {
			t.Fatalf("evaltest: sentinel %s: %v", sn.Addr, err)
		}
		addrs[i] = net.JoinHostPort(hp[0], hp[1])
	}
	return addrs
}

// Node is the data node at addr.
func (s *Sentinel) Node(addr string) *Server {
	for _, n := range s.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// Failover forces a failover with SENTINEL FAILOVER on the first Sentinel
// and waits until a replica is promoted (ROLE master) and every Sentinel
// names it. It returns the new master's address. The old master goes on
// taking writes until a Sentinel turns it into a replica, up to 10 s later
// (its next INFO): clients that follow the Sentinels leave it before.
func (s *Sentinel) Failover(t testing.TB) string {
	t.Helper()
	old := s.MasterAddr(t)
	if err := s.sentinels[0].Failover(t.Context(), s.Master).Err(); err != nil {
		t.Fatalf("evaltest: SENTINEL FAILOVER %s: %v", s.Master, err)
	}
	var addr string
	Eventually(t, 30*time.Second, "no replica of "+old+" was promoted and named by every Sentinel", func() bool {
		addrs := s.masterAddrs(t)
		for _, a := range addrs {
			if a == old || a != addrs[0] {
				return false
			}
		}
		addr = addrs[0]
		role, err := s.node(addr).Do(t.Context(), "ROLE").Slice()
		return err == nil && len(role) > 0 && role[0] == "master"
	})
	return addr
}

// WaitReplica waits until the server at addr is a replica in sync with its
// master: after a failover, until the Sentinels turned the old master into
// a replica of the new one.
func (s *Sentinel) WaitReplica(t testing.TB, addr string, timeout time.Duration) {
	t.Helper()
	c := s.node(addr)
	Eventually(t, timeout, addr+" never became a replica in sync", func() bool {
		info, err := c.Info(t.Context(), "replication").Result()
		return err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_link_status:up")
	})
}

// node is a client of the data node at addr, made on first use and closed
// when the test ends.
func (s *Sentinel) node(addr string) *redis.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.nodes[addr]
	if !ok {
		c = redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
		s.t.Cleanup(func() { _ = c.Close() })
		s.nodes[addr] = c
	}
	return c
}
