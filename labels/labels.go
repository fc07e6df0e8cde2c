// Package labels holds executor labels (gpu=a100) and the label sets an
// eval may require, and how both are spelled, so that the pool, the task
// payloads and the CLI agree on them without depending on each other.
//
// A label set is named by its "key=value" strings sorted as strings and
// joined by ",": the pool indexes available executors under these names
// (lua/lib.lua sorts the same way).
package labels

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
)

// Max is how many labels an executor may carry. An executor with k labels
// is kept in the available index of each of its 2^k - 1 label sets, so that
// an eval requiring any of them is served in O(log N): each release costs
// 2^k writes and each acquire 2^k removals, which stays cheap only for a
// handful of labels.
const Max = 4

// ErrInvalid means labels are malformed or too many.
var ErrInvalid = errors.New("invalid labels")

var part = regexp.MustCompile(`^[A-Za-z0-9_./:-]{1,63}$`)

// Validate checks labels an executor carries or an eval requires: at most
// Max, keys and values of 1 to 63 letters, digits or "_./:-".
func Validate(labels map[string]string) error {
	if len(labels) > Max {
		return fmt.Errorf("%w: %d labels, at most %d", ErrInvalid, len(labels), Max)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if !part.MatchString(k) || !part.MatchString(labels[k]) {
			return fmt.Errorf("%w: %s=%s: keys and values are 1 to 63 letters, digits or _./:-", ErrInvalid, k, labels[k])
		}
	}
	return nil
}

// Parse reads labels written as "key=value" strings, as the CLI takes them.
// None gives nil.
func Parse(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("%w: %q: want key=value", ErrInvalid, kv)
		}
		if old, dup := m[k]; dup && old != v {
			return nil, fmt.Errorf("%w: %s given twice", ErrInvalid, k)
		}
		m[k] = v
	}
	return m, Validate(m)
}

// Name is the name of a label set; empty for none.
func Name(labels map[string]string) string { return strings.Join(parts(labels), ",") }

// Serves reports whether the label set named set holds every label of the
// one named required (names as Name gives them): an executor with those
// labels can serve an eval that requires these.
func Serves(set, required string) bool {
	if required == "" {
		return true
	}
	have := strings.Split(set, ",")
	for _, p := range strings.Split(required, ",") {
		if !slices.Contains(have, p) {
			return false
		}
	}
	return true
}

// Subsets names every non-empty subset of the label set named set: the
// requirements an executor with those labels serves.
func Subsets(set string) []string {
	if set == "" {
		return nil
	}
	ps := strings.Split(set, ",")
	if len(ps) > Max {
		ps = ps[:Max]
	}
	var sets []string
	for mask := 1; mask < 1<<len(ps); mask++ {
		var sub []string
		for i, p := range ps {
			if mask&(1<<i) != 0 {
				sub = append(sub, p)
			}
		}
		sets = append(sets, strings.Join(sub, ","))
	}
	return sets
}

func parts(labels map[string]string) []string {
	ps := make([]string, 0, len(labels))
	for k, v := range labels {
		ps = append(ps, k+"="+v)
	}
	slices.Sort(ps)
	return ps
}
