package run

import (
	"maps"
	"slices"
)

// Tallies is the runs whose tallies s keeps, by name, and the memory they
// take, as estimated, for the tests of the bound.
func (s *Store) Tallies() ([]string, int) {
	s.live.mu.Lock()
	defer s.live.mu.Unlock()
	return slices.Sorted(maps.Keys(s.live.runs)), s.live.bytes
}
