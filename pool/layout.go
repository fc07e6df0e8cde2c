package pool

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"
)

// invariantTypes is the number of the invariant that every key under the
// pool's prefix holds the type the layout gives it (docs/design.md).
const invariantTypes = 10

// layoutTypes is the Redis type of each key of the pool's layout
// (docs/design.md, section 2), and of each family of keys by the prefix of
// their names: label-set indexes and wait lists, wake lists. A scratch key
// is the tests' own and may hold anything ("").
func (p *Pool) layoutTypes() (keys, families map[string]string) {
	k := p.keys
	keys = map[string]string{
		k.Executors(): "hash", k.Available(): "zset", k.Leases(): "string", k.Deadlines(): "zset",
		k.Holders(): "hash", k.Draining(): "set", k.Fence(): "string", k.Epoch(): "string",
		k.Instances(): "hash", k.Waiters(): "zset", k.Waiting(): "hash", k.Quarantine(): "zset",
		k.Avoid(): "hash", k.Labelled(): "hash", k.Cancelled(): "zset", k.History(): "stream",
		k.Outlived(): "zset", k.Clock(): "hash", k.Settings(): "hash", k.Reaped(): "string",
	}
	families = map[string]string{
		k.LabelledFor(""): "zset", k.WaitersFor(""): "zset", k.WakePrefix(): "list", k.Scratch(""): "",
	}
	return keys, families
}

// olderLayout says how the pool is an older release's (migrate.lua), or
// "" when it is this one's.
func (p *Pool) olderLayout(ctx context.Context) (string, error) {
	var leases *redis.StatusCmd
	var epoch, sets *redis.IntCmd
	_, err := p.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		leases = pipe.Type(ctx, p.keys.Leases())
		epoch, sets = pipe.Exists(ctx, p.keys.Epoch()), pipe.Exists(ctx, p.keys.OlderLabelSets())
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("pool: check the layout of %s: %w", p.name, err)
	}
	var what string
	switch {
	case leases.Val() == "none" && epoch.Val() == 1:
		return "the pool's leases marker is missing (lost with its key): an older release's scripts would not be refused; the next acquire, `pool add` or worker tick writes it again", nil
	case leases.Val() == "hash" && epoch.Val() == 0:
		what = "no epoch marker and its leases in a hash of their own (89b3e49 or older)"
	case leases.Val() == "hash" || sets.Val() == 1:
		what = "its leases in a hash of their own, its label sets indexed per subset (1932b7a or older)"
	default:
		return "", nil
	}
	return "the pool was written by an older release, " + what + ": the next acquire, `pool add` or worker migrates it in place", nil
}

// fenceInteger is a fence INCR takes and stays far from int64's limit: an
// integer as Redis writes one, of at most 18 digits.
var fenceInteger = regexp.MustCompile(`^(0|-?[1-9][0-9]{0,17})$`)

// checkTypes reports, under invariant 10, every key under the pool's prefix
// whose type is not the one the layout gives it, and a fence INCR refuses.
// The scripts do not check types (docs/reliability.md, "Threat model"):
// this is where a key another program overwrote is found. Keys of names the
// layout does not know are left alone. It walks the pool's keys with SCAN,
// on the node that holds the pool's slot in a cluster.
func (p *Pool) checkTypes(ctx context.Context) ([]Violation, error) {
	var c redis.Cmdable = p.client
	if cc, ok := p.client.(*redis.ClusterClient); ok {
		node, err := cc.MasterForKey(ctx, p.keys.Executors())
		if err != nil {
			return nil, fmt.Errorf("pool: check the types of %s: %w", p.name, err)
		}
		c = node
	}
	want, families := p.layoutTypes()
	expected := func(key string) (string, bool) {
		if t, ok := want[key]; ok {
			return t, true
		}
		for prefix, t := range families {
			if strings.HasPrefix(key, prefix) {
				return t, t != ""
			}
		}
		return "", false
	}
	var vs []Violation
	var cursor uint64
	for {
		page, next, err := c.Scan(ctx, cursor, p.keys.Pattern(), 1000).Result()
		if err != nil {
			return nil, fmt.Errorf("pool: check the types of %s: %w", p.name, err)
		}
		var named []string
		var types []*redis.StatusCmd
		_, err = c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, key := range page {
				if _, ok := expected(key); ok {
					named = append(named, key)
					types = append(types, pipe.Type(ctx, key))
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("pool: check the types of %s: %w", p.name, err)
		}
		for i, key := range named {
			t, _ := expected(key)
			// "none": deleted since the SCAN saw it.
			if got := types[i].Val(); got != t && got != "none" {
				vs = append(vs, Violation{Invariant: invariantTypes, Problem: fmt.Sprintf("%s holds a %s, not a %s: not written by evalpool", key, got, t)})
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	fence, err := c.Get(ctx, p.keys.Fence()).Result()
	switch {
	case err == nil && !fenceInteger.MatchString(fence):
		vs = append(vs, Violation{Invariant: invariantTypes, Problem: fmt.Sprintf("%s holds %q, not an integer of at most 18 digits: not written by evalpool", p.keys.Fence(), fence)})
	case err != nil && !errors.Is(err, redis.Nil) && !redis.HasErrorPrefix(err, "WRONGTYPE"):
		return nil, fmt.Errorf("pool: check the fence of %s: %w", p.name, err)
	}
	settings, err := c.HGetAll(ctx, p.keys.Settings()).Result()
	if err != nil && !redis.HasErrorPrefix(err, "WRONGTYPE") {
		return nil, fmt.Errorf("pool: check the settings of %s: %w", p.name, err)
	}
	for field, value := range settings {
		if _, ok := settingValue(field, value); !ok {
			vs = append(vs, Violation{Invariant: invariantTypes, Problem: fmt.Sprintf("%s holds %s = %q, not a setting pool config writes: the pool applies the default (pool config writes them again)", p.keys.Settings(), field, value)})
		}
	}
	slices.SortFunc(vs, func(a, b Violation) int { return strings.Compare(a.Problem, b.Problem) })
	return vs, nil
}
